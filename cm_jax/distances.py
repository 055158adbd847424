"""Per-sample distances between two batches [B, ...] -> [B] (SPEC §4)."""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp

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


NAMES = ("l1", "l2", "pseudo_huber")


def get_distance(name: str, sample_shape) -> Distance:
  if name == "l2":
    return l2
  if name == "l1":
    return l1
  if name == "pseudo_huber":
    c = pseudo_huber_constant(sample_shape)
    return lambda a, b: pseudo_huber(a, b, c)
  if name == "lpips":
    raise ValueError("distance='lpips' needs converted VGG16/LPIPS weights, which this version does "
                     "not load yet; use one of " + ", ".join(NAMES) + ".")
  raise ValueError(f"Unknown distance {name!r}; choose one of {', '.join(NAMES)}.")
