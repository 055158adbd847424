"""Consistency-model samplers (SPEC §8) as pure functions.

`f(x, sigma) -> x0` is a consistency function with its parameters, labels and eval mode bound.
Noise is drawn per sample from `fold_in(key, index)`, so sample i is the same whatever the batch
size or device count that produces it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras

ConsistencyFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def per_sample_normal(key, indices, sample_shape) -> jnp.ndarray:
  """[len(indices), *sample_shape] standard normals, row i from fold_in(key, indices[i])."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), sample_shape))(indices)


def check_sigmas(sigmas: Sequence[float], levels: karras.NoiseLevels) -> np.ndarray:
  """Sampling levels must decrease strictly and lie in (sigma_min, sigma_max]."""
  s = np.asarray(sigmas, np.float64).reshape(-1)
  if s.size == 0:
    raise ValueError("Give at least one sampling level.")
  if np.any(s <= levels.sigma_min) or np.any(s > levels.sigma_max * (1 + 1e-6)):
    raise ValueError(f"Sampling levels must lie in ({levels.sigma_min}, {levels.sigma_max}], "
                     f"got {s.tolist()}.")
  if np.any(np.diff(s) >= 0):
    raise ValueError(f"Sampling levels must decrease strictly, got {s.tolist()}.")
  return s


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
