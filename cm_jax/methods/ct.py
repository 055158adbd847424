"""Consistency training (CT, SPEC §3) and the machinery iCT shares with it.

A method is `loss(params, target_params, batch, rng, step, frozen=None) -> (loss, aux)` plus the
target-network update; `frozen` holds read-only parameters a method needs besides its own (the CD
teacher). CT and iCT differ only in four pluggable pieces: the curriculum N(k), how the adjacent
pair (s_n, s_{n+1}) is drawn, the weighting lambda, and the target network. CD (cd.py) adds a
fifth: x_lo from one teacher ODE step instead of x + s_n z. ECT (ect.py) replaces the grid by
continuous levels (r, t) from a `level_sampler`, where r = 0 makes the target the data itself.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from cm_jax import distances, karras
from cm_jax.errors import UserError

# net(params, x_in [B,H,W,C], c_noise [B], labels [B] | None, train, dropout_rng) -> F [B,H,W,C]
Net = Callable[..., jnp.ndarray]
# (teacher_params, x_hi, sigma_hi [B], sigma_lo [B], labels) -> x_lo: one step down the PF-ODE
TeacherStep = Callable[..., jnp.ndarray]


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


def uniform_pair_index(rng, num_levels, batch_size: int):
  """n ~ U{1, ..., N-1}: the lower level of an adjacent pair (1-based)."""
  return jax.random.randint(rng, (batch_size,), 1, num_levels)


def unit_weight(sigma_lo, sigma_hi):
  del sigma_hi
  return jnp.ones_like(sigma_lo)


@dataclasses.dataclass(frozen=True)
class ConsistencyTraining:
  """Discrete-time consistency training with pluggable curriculum, pair sampling and weighting."""
  net: Net
  levels: karras.NoiseLevels
  distance: distances.Distance
  num_levels: Optional[Callable[[Any], jnp.ndarray]]            # step -> N(k); None: level_sampler
  pair_index: Optional[Callable[[Any, Any, int], jnp.ndarray]]  # (rng, N, B) -> n in 1..N-1
  weight: Callable[[Any, Any], jnp.ndarray]            # (s_n, s_{n+1}) -> lambda
  target_decay: Optional[Callable[[Any], jnp.ndarray]]  # step -> mu(k); None: target = sg(theta)
  teacher_step: Optional[TeacherStep] = None  # CD; None: CT's x_lo = x + s_n z
  # Continuous levels instead of the grid (ECT): (rng, step, B) -> (sigma_lo [B], sigma_hi [B]),
  # sigma_lo = 0 meaning "the target is the clean sample x itself".
  level_sampler: Optional[Callable[[Any, Any, int], tuple]] = None
  # step -> {name: scalar} logged with the loss; default {"num_levels": N(k)}.
  curriculum: Optional[Callable[[Any], dict]] = None

  @property
  def has_target_network(self) -> bool:
    return self.target_decay is not None

  @property
  def uses_teacher(self) -> bool:
    """Whether `loss` needs the teacher's parameters as `frozen`."""
    return self.teacher_step is not None

  def curriculum_values(self, step) -> dict:
    return self.curriculum(step) if self.curriculum else {"num_levels": self.num_levels(step)}

  def draw_levels(self, rng, step, batch_size: int):
    """(sigma_lo [B], sigma_hi [B]): an adjacent pair of the step's grid, or the level sampler's."""
    if self.level_sampler is not None:
      return self.level_sampler(rng, step, batch_size)
    n_levels = self.num_levels(step)
    n = self.pair_index(rng, n_levels, batch_size)
    return (karras.sigma_at(n, n_levels, self.levels),
            karras.sigma_at(n + 1, n_levels, self.levels))

  def consistency(self, params, x, sigma, labels, train: bool, rng):
    net = lambda x_in, noise: self.net(params, x_in, noise, labels, train, rng)
    return karras.consistency_function(net, x, sigma, self.levels)

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    x, labels = batch["image"], batch.get("label")
    rng_pair, rng_noise, rng_dropout = jax.random.split(rng, 3)
    sigma_lo, sigma_hi = self.draw_levels(rng_pair, step, x.shape[0])
    z = jax.random.normal(rng_noise, x.shape, x.dtype)
    x_hi = x + karras.per_sample(sigma_hi, x) * z
    if self.uses_teacher:
      if frozen is None:
        raise UserError("Distillation needs the teacher's parameters: pass them as `frozen`.")
      x_lo = jax.lax.stop_gradient(self.teacher_step(frozen, x_hi, sigma_hi, sigma_lo, labels))
    else:
      # The same z on both sides: x_lo is the exact ODE point for a one-sample data distribution.
      x_lo = x + karras.per_sample(sigma_lo, x) * z
    online = self.consistency(params, x_hi, sigma_hi, labels, True, rng_dropout)
    teacher_params = target_params if self.has_target_network else params
    # The same dropout key for the online and target passes.
    target = jax.lax.stop_gradient(
        self.consistency(teacher_params, x_lo, sigma_lo, labels, True, rng_dropout))
    # sigma_lo = 0 (ECT's r = 0): the target is x itself (grid levels are all > 0).
    target = jnp.where(karras.per_sample(sigma_lo, x) > 0, target, x)
    weights = self.weight(sigma_lo, sigma_hi)
    per_sample = weights * self.distance(online, target)
    aux = {**self.curriculum_values(step), "distance": jnp.mean(self.distance(online, target))}
    return jnp.mean(per_sample), aux

  def extra_params(self, rng) -> dict:
    del rng
    return {}

  def update_target(self, target_params, params, step):
    if not self.has_target_network:
      return target_params
    mu = self.target_decay(step)
    return jax.tree.map(lambda t, p: mu * t + (1.0 - mu) * p, target_params, params)

  def schedule(self, step) -> dict[str, float]:
    """Host-side curriculum values for logging."""
    out = {k: float(v) for k, v in self.curriculum_values(step).items()}
    if self.has_target_network:
      out["target_decay"] = float(self.target_decay(step))
    return out


def create(config, net: Net, sample_shape) -> ConsistencyTraining:
  cc = config.consistency
  total = int(config.train.num_steps)
  s0, s1 = int(cc.s0), int(cc.s1)
  mu0, schedule = float(cc.mu0), str(cc.ema_schedule)
  check_ema_schedule(schedule)
  if not 0 <= mu0 < 1:
    raise UserError(f"consistency.mu0 must lie in [0, 1), got {mu0}.")
  num_levels = lambda step: ct_num_levels(step, total, s0, s1)
  return ConsistencyTraining(
      net=net,
      levels=karras.NoiseLevels.from_config(config.karras),
      distance=distances.get_distance(cc.distance, sample_shape, cc.lpips_weights),
      num_levels=num_levels,
      pair_index=uniform_pair_index,
      weight=unit_weight,
      target_decay=lambda step: ct_target_decay(num_levels(step), s0, mu0, schedule),
  )
