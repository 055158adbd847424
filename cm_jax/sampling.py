"""Consistency-model samplers and the EDM ODE samplers (docs/maths.md §8) as pure functions.

`f(x, sigma) -> x0` is a consistency function with its parameters, labels and eval mode bound.
Noise is drawn per sample from `fold_in(key, index)`, so sample i is the same whatever the batch
size or device count that produces it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras, ode
from cm_jax.errors import UserError

ConsistencyFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def per_sample_normal(key, indices, sample_shape) -> jnp.ndarray:
  """[len(indices), *sample_shape] standard normals, row i from fold_in(key, indices[i])."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), sample_shape))(indices)


# fold_in salt for the label stream; sampling steps (the noise streams' salts) never reach it.
_LABEL_STREAM = 2**31 - 1


def per_sample_labels(key, indices, num_classes: int) -> jnp.ndarray:
  """int32 [len(indices)] class labels, label i from the seed and i alone (as the noise is)."""
  label_key = jax.random.fold_in(key, _LABEL_STREAM)
  draw = lambda i: jax.random.randint(jax.random.fold_in(label_key, i), (), 0, num_classes)
  return jax.vmap(draw)(jnp.asarray(indices)).astype(jnp.int32)


def sigmas_from_ts(ts: Sequence[int], steps: int, levels: karras.NoiseLevels) -> np.ndarray:
  """The levels a released `ts` list evaluates: indices into a descending grid of `steps` levels.

  The last index of a released list (e.g. 17 of 0,11,17 of 18) is the end of the trajectory
  (sigma_min) and is not evaluated; a single index is one level.
  """
  ts = [int(t) for t in ts]
  if any(b <= a for a, b in zip(ts, ts[1:])):
    raise UserError(f"ts indices must increase strictly (0 = sigma_max first, the last = the end "
                    f"of the trajectory), got {','.join(map(str, ts))}.")
  sigmas = karras.ts_to_sigmas(ts, steps, levels)  # validates every index
  return check_sigmas(sigmas[:-1] if len(sigmas) > 1 else sigmas, levels)


def check_sigmas(sigmas: Sequence[float], levels: karras.NoiseLevels) -> np.ndarray:
  """Sampling levels must decrease strictly and lie in (sigma_min, sigma_max]."""
  s = np.asarray(sigmas, np.float64).reshape(-1)
  if s.size == 0:
    raise UserError("Give at least one sampling level.")
  # Relative slack both ends: a grid's end computed in float lands a rounding away from eps / T.
  if np.any(s <= levels.sigma_min * (1 + 1e-6)) or np.any(s > levels.sigma_max * (1 + 1e-6)):
    raise UserError(f"Sampling levels must lie in ({levels.sigma_min}, {levels.sigma_max}], "
                    f"got {_levels(s)}.")
  if np.any(np.diff(s) >= 0):
    raise UserError(f"Sampling levels must decrease strictly, got {_levels(s)}.")
  return s


def check_times(times: Sequence[float], upper: float, span: str, model: str) -> np.ndarray:
  """Consistency sampling times (TrigFlow, MeanFlow) must decrease strictly and lie in
  (0, upper]; `span` writes that interval in the message, `model` names the time."""
  t = np.asarray(times, np.float64).reshape(-1)
  if t.size == 0:
    raise UserError("Give at least one sampling time.")
  if np.any(t <= 0) or np.any(t > upper * (1 + 1e-6)):
    raise UserError(f"{model} sampling times must lie in {span}, got {t.tolist()}.")
  if np.any(np.diff(t) >= 0):
    raise UserError(f"{model} sampling times must decrease strictly, got {t.tolist()}.")
  return t


def _levels(s: np.ndarray) -> str:
  return "[" + ", ".join(f"{x:.6g}" for x in s) + "]"


def multistep_sample(f: ConsistencyFn, key, indices, sample_shape, sigmas,
                    levels: karras.NoiseLevels, clip: bool = True) -> jnp.ndarray:
  """CM Algorithm 1: x = f(s_0 z, s_0); then x = f(x + sqrt(s^2 - eps^2) z', s) for s in sigmas[1:].

  One level is one-step sampling. `sigmas` is a static sequence (usually starting at sigma_max).
  Returns images in [-1, 1] (clipped after every f, as the releases do, when `clip`).
  """
  sigmas = [float(s) for s in sigmas]
  x = None
  for step, sigma in enumerate(sigmas):
    z = per_sample_normal(jax.random.fold_in(key, step), indices, sample_shape)
    if x is None:
      x_t = sigma * z
    else:
      x_t = x + np.sqrt(sigma**2 - levels.sigma_min**2) * z
    x = f(x_t, jnp.full((x_t.shape[0],), sigma, jnp.float32))
    if clip:
      x = jnp.clip(x, -1.0, 1.0)
  return x


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] with rounding, the .npz exchange format."""
  x = np.asarray(images, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class EDMPlan:
  """How to sample a denoiser (EDM, or TrigFlow through trigflow.ode_sample): `solver` over the
  descending Karras grid of `num_levels` (sigma_max ... sigma_min), then one Euler step to
  sigma = 0 (docs/maths.md §8: 18 levels, 35 NFE)."""
  num_levels: int = 18
  solver: str = "heun"

  def __post_init__(self):
    ode.get_step(self.solver)  # validates the name
    if self.num_levels < 2:
      raise UserError(f"EDM sampling needs at least 2 levels, got {self.num_levels}.")

  @classmethod
  def from_config(cls, sample_config) -> "EDMPlan":
    return cls(int(sample_config.edm_levels), str(sample_config.edm_solver))

  @property
  def nfe(self) -> int:
    """Network evaluations: Heun 2N - 1, Euler N."""
    return ode.EVALS_PER_STEP[self.solver] * (self.num_levels - 1) + 1

  @property
  def name(self) -> str:
    return f"{self.solver}-{self.num_levels}"

  def sigmas(self, levels: karras.NoiseLevels) -> np.ndarray:
    return karras.karras_sigmas(self.num_levels, levels)[::-1].copy()


def edm_sample(denoise: ode.DenoiserFn, key, indices, sample_shape, sigmas, solver: str = "heun",
               clip: bool = True) -> jnp.ndarray:
  """Solves the probability-flow ODE from x = sigmas[0] z down the decreasing `sigmas` (all > 0),
  then takes the last step to sigma = 0 with Euler (x0 = D(x, sigmas[-1])), as EDM does.

  z is the first noise of `multistep_sample` for the same key and indices, so a teacher's sample
  and a distilled student's 1-step sample of one seed start from the same point. The steps run
  in a `lax.scan`: one compiled network call per solver stage, whatever the number of levels.
  """
  step = ode.get_step(solver)
  sigmas = jnp.asarray(np.asarray(sigmas, np.float32))
  x = sigmas[0] * per_sample_normal(jax.random.fold_in(key, 0), indices, sample_shape)
  pairs = jnp.stack([sigmas[:-1], sigmas[1:]], axis=1)  # [N-1, 2]: (sigma, sigma_next)
  x, _ = jax.lax.scan(lambda x, p: (step(denoise, x, p[0], p[1]), None), x, pairs)
  x = denoise(x, sigmas[-1])
  return jnp.clip(x, -1.0, 1.0) if clip else x
