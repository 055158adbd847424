"""Per-sample distances between two batches [B, ...] -> [B] (docs/maths.md §4)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from cm_jax.errors import UserError
from cm_jax.models import lpips as lpips_lib

Distance = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _flat(a):
  return a.reshape(a.shape[0], -1).astype(jnp.float32)


def l2(a, b):
  """Mean squared difference per element, as the release averages."""
  return jnp.mean(jnp.square(_flat(a) - _flat(b)), axis=1)


def l1(a, b):
  return jnp.mean(jnp.abs(_flat(a) - _flat(b)), axis=1)


def pseudo_huber_constant(sample_shape) -> float:
  """iCT's c = 0.00054 sqrt(d), d = H*W*C (0.0300 on CIFAR-10)."""
  return 0.00054 * math.sqrt(math.prod(sample_shape))


def pseudo_huber(a, b, c: float):
  """sqrt(||a - b||^2 + c^2) - c over the whole sample, not per element."""
  sq = jnp.sum(jnp.square(_flat(a) - _flat(b)), axis=1)
  return jnp.sqrt(sq + c * c) - c


def lpips(lpips_weights: str) -> Distance:
  """LPIPS v0.1 (VGG16) from converted weights (docs/maths.md §4): [B] distances of [-1, 1]
  batches, inputs below 256 px resized bilinearly to 224 first. See cm_jax/models/lpips.py."""
  params = jax.tree_util.tree_map(jnp.asarray, lpips_lib.load(lpips_weights))
  return lambda a, b: lpips_lib.lpips_distance(params, a, b)


NAMES = ("l1", "l2", "pseudo_huber", "lpips")


def get_distance(name: str, sample_shape, lpips_weights: str = "") -> Distance:
  """lpips_weights: the converted LPIPS directory (consistency.lpips_weights), for name='lpips'."""
  if name == "l2":
    return l2
  if name == "l1":
    return l1
  if name == "pseudo_huber":
    c = pseudo_huber_constant(sample_shape)
    return lambda a, b: pseudo_huber(a, b, c)
  if name == "lpips":
    return lpips(lpips_weights)
  raise UserError(f"Unknown distance {name!r}; choose one of {', '.join(NAMES)}.")
