"""The machinery shared by the consistency methods: CT and iCT (ct.py, ict.py), CD (cd.py) and
ECT (ect.py) are each a `ConsistencyTraining` with their own pieces.

A method is `loss(params, target_params, batch, rng, step, frozen=None) -> (loss, aux)` plus the
target-network update (contract.Method); `frozen` holds read-only parameters a method needs besides
its own (CD's teacher; ECT only starts from one and takes none). The pieces: how the pair of
levels is drawn (`GridPairs`: adjacent levels of a Karras grid of N(k) levels, CT / iCT / CD;
`ContinuousPairs`: levels (r, t) from a sampler, ECT, where r = 0 makes the target the data
itself), the weighting lambda, the target network (an EMA with mu(k), or none: stopgrad(theta)),
and for CD x_lo from one teacher ODE step instead of x + s_n z.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from cm_jax import distances, karras
from cm_jax.errors import UserError

# net(params, x_in [B,H,W,C], c_noise [B], labels [B] | None, train, dropout_rng) -> F [B,H,W,C]
Net = Callable[..., jnp.ndarray]
# (teacher_params, x_hi, sigma_hi [B], sigma_lo [B], labels) -> x_lo: one step down the PF-ODE
TeacherStep = Callable[..., jnp.ndarray]


def uniform_pair_index(rng, num_levels, batch_size: int):
  """n ~ U{1, ..., N-1}: the lower level of an adjacent pair (1-based)."""
  return jax.random.randint(rng, (batch_size,), 1, num_levels)


def unit_weight(sigma_lo, sigma_hi):
  del sigma_hi
  return jnp.ones_like(sigma_lo)


def inverse_gap_weight(sigma_lo, sigma_hi):
  """iCT's lambda = 1 / (s_{n+1} - s_n): the low levels, whose differences are small, count."""
  return 1.0 / (sigma_hi - sigma_lo)


WEIGHTS = {"uniform": unit_weight, "inverse_gap": inverse_gap_weight}


def get_weight(name: str, key: str):
  if name not in WEIGHTS:
    raise UserError(f"{key} must be one of {', '.join(WEIGHTS)}, got {name!r}.")
  return WEIGHTS[name]


@dataclasses.dataclass(frozen=True)
class GridPairs:
  """Adjacent levels (s_n, s_{n+1}) of the Karras grid of N(k) levels of the step."""
  levels: karras.NoiseLevels
  num_levels: Callable[[Any], jnp.ndarray]            # step -> N(k)
  pair_index: Callable[[Any, Any, int], jnp.ndarray]  # (rng, N, B) -> n in 1..N-1

  def draw(self, rng, step, batch_size: int):
    n_levels = self.num_levels(step)
    n = self.pair_index(rng, n_levels, batch_size)
    return (karras.sigma_at(n, n_levels, self.levels),
            karras.sigma_at(n + 1, n_levels, self.levels))

  def curriculum(self, step) -> dict:
    return {"num_levels": self.num_levels(step)}


@dataclasses.dataclass(frozen=True)
class ContinuousPairs:
  """Levels (sigma_lo, sigma_hi) from a sampler; sigma_lo = 0 means "the target is x itself"."""
  sampler: Callable[[Any, Any, int], tuple]  # (rng, step, B) -> (sigma_lo [B], sigma_hi [B])
  values: Callable[[Any], dict]              # step -> {name: scalar} logged with the loss

  def draw(self, rng, step, batch_size: int):
    return self.sampler(rng, step, batch_size)

  def curriculum(self, step) -> dict:
    return self.values(step)


@dataclasses.dataclass(frozen=True)
class ConsistencyTraining:
  """Consistency training and distillation: online f(x + s_hi z, s_hi) against a stop-gradient
  target at s_lo, the pair drawn by `pairs`, weighted by lambda(s_lo, s_hi)."""
  net: Net
  levels: karras.NoiseLevels
  distance: distances.Distance
  pairs: "GridPairs | ContinuousPairs"
  weight: Callable[[Any, Any], jnp.ndarray]            # (s_n, s_{n+1}) -> lambda
  target_decay: Optional[Callable[[Any], jnp.ndarray]]  # step -> mu(k); None: target = sg(theta)
  teacher_step: Optional[TeacherStep] = None  # CD; None: CT's x_lo = x + s_n z

  @property
  def has_target_network(self) -> bool:
    return self.target_decay is not None

  @property
  def uses_teacher(self) -> bool:
    """Whether `loss` needs the teacher's parameters as `frozen`."""
    return self.teacher_step is not None

  def curriculum_values(self, step) -> dict:
    return self.pairs.curriculum(step)

  def draw_levels(self, rng, step, batch_size: int):
    """(sigma_lo [B], sigma_hi [B]) of this step."""
    return self.pairs.draw(rng, step, batch_size)

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
