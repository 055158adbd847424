"""Improved consistency training (iCT, docs/maths.md §5), a `consistency.ConsistencyTraining`.

Differences from CT: no target network (teacher = stopgrad(theta)), pseudo-Huber distance over the
whole sample, pairs drawn from a discretised log-normal, an exponential curriculum in N, and the
weighting lambda = 1 / (s_{n+1} - s_n).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from cm_jax import distances, karras
from cm_jax.errors import UserError
from cm_jax.methods import consistency


def ict_doubling_period(total_steps: int, s0: int, s1: int) -> int:
  """K' = floor(K / (log2(floor(s1 / s0)) + 1)): steps between doublings of N - 1."""
  return max(1, math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)))


def ict_num_levels(step, total_steps: int, s0: int, s1: int, xp=jnp):
  """N(k) = min(s0 * 2^floor(k / K'), s1) + 1."""
  period = ict_doubling_period(total_steps, s0, s1)
  doublings = xp.minimum(xp.asarray(step) // period, 20)  # s0 * 2^20 is past any s1, in int32
  return (xp.minimum(s0 * 2**doublings, s1) + 1).astype(xp.int32)


def lognormal_pair_logits(num_levels, max_levels: int, levels: karras.NoiseLevels,
                          p_mean: float, p_std: float):
  """log p(n), n = 1..max_levels-1, p(n) ∝ erf((ln s_{n+1} - Pm)/(√2 Ps)) - erf((ln s_n - Pm)/(√2 Ps)).

  Entries n >= N(k) are -inf, so a fixed-size array serves every N(k) inside jit.
  """
  n = jnp.arange(1, max_levels, dtype=jnp.float32)
  lo = karras.sigma_at(n, num_levels, levels)
  hi = karras.sigma_at(n + 1, num_levels, levels)
  cdf = lambda s: erf((jnp.log(s) - p_mean) / (math.sqrt(2.0) * p_std))
  mass = cdf(hi) - cdf(lo)
  valid = n < num_levels
  return jnp.where(valid & (mass > 0), jnp.log(jnp.where(valid, mass, 1.0)), -jnp.inf)


inverse_gap_weight = consistency.inverse_gap_weight


def create(config, net: consistency.Net, sample_shape) -> consistency.ConsistencyTraining:
  cc = config.consistency
  total = int(config.train.num_steps)
  s0, s1 = int(cc.s0), int(cc.s1)
  if not 0 < s0 <= s1:
    raise UserError(f"iCT needs 0 < consistency.s0 <= consistency.s1, got s0={s0}, s1={s1}.")
  levels = karras.NoiseLevels.from_config(config.karras)
  p_mean, p_std = float(cc.p_mean), float(cc.p_std)

  def pair_index(rng, num_levels, batch_size):
    logits = lognormal_pair_logits(num_levels, s1 + 1, levels, p_mean, p_std)
    return jax.random.categorical(rng, logits, shape=(batch_size,)) + 1

  return consistency.ConsistencyTraining(
      net=net,
      levels=levels,
      distance=distances.get_distance(cc.distance, sample_shape, cc.lpips_weights),
      pairs=consistency.GridPairs(levels, lambda step: ict_num_levels(step, total, s0, s1),
                                  pair_index),
      weight=inverse_gap_weight,
      target_decay=None,
  )
