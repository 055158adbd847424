"""Consistency training (CT, docs/maths.md §3): uniform adjacent pairs of a grid whose N(k) grows
as a square root, lambda = 1, and an EMA target network with mu(k) (consistency.py holds the
machinery the consistency methods share)."""
from __future__ import annotations

import math

import jax.numpy as jnp

from cm_jax import distances, karras
from cm_jax.errors import UserError
from cm_jax.methods import consistency


def ct_num_levels(step, total_steps: int, s0: int, s1: int, xp=jnp):
  """N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1."""
  k = xp.asarray(step, xp.float32 if xp is jnp else xp.float64)
  inner = xp.sqrt(k / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2)
  return (xp.ceil(inner - 1) + 1).astype(xp.int32)


def check_ema_schedule(schedule: str) -> None:
  if schedule not in ("paper", "release"):
    raise UserError(f"consistency.ema_schedule must be 'paper' or 'release', got {schedule!r}.")


def ct_target_decay(num_levels, s0: int, mu0: float, schedule: str = "paper", xp=jnp):
  """mu(k) = exp(s0 ln(mu0) / N(k)); the release divides by N(k) - 1 instead."""
  check_ema_schedule(schedule)
  n = xp.asarray(num_levels, xp.float32 if xp is jnp else xp.float64)
  if mu0 <= 0:
    return xp.zeros_like(n)  # mu0 = 0: the target is the online network itself
  denom = n if schedule == "paper" else n - 1
  return xp.exp(s0 * math.log(mu0) / denom)


def create(config, net: consistency.Net, sample_shape) -> consistency.ConsistencyTraining:
  cc = config.consistency
  total = int(config.train.num_steps)
  s0, s1 = int(cc.s0), int(cc.s1)
  mu0, schedule = float(cc.mu0), str(cc.ema_schedule)
  check_ema_schedule(schedule)
  if not 0 <= mu0 < 1:
    raise UserError(f"consistency.mu0 must lie in [0, 1), got {mu0}.")
  num_levels = lambda step: ct_num_levels(step, total, s0, s1)
  levels = karras.NoiseLevels.from_config(config.karras)
  return consistency.ConsistencyTraining(
      net=net,
      levels=levels,
      distance=distances.get_distance(cc.distance, sample_shape, cc.lpips_weights),
      pairs=consistency.GridPairs(levels, num_levels, consistency.uniform_pair_index),
      weight=consistency.unit_weight,
      target_decay=lambda step: ct_target_decay(num_levels(step), s0, mu0, schedule),
  )
