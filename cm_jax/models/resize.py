"""torch's bilinear resize (F.interpolate, align_corners=False, no antialias) in JAX: the
preprocessing the FID Inception and LPIPS networks were trained and measured with."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out_size, in_size] weights of torch's bilinear resize along one axis (align_corners=False,
  no antialias): source x = (i + 0.5) * in/out - 0.5, clamped below at 0, two taps. Computed in
  float32 as torch's CPU kernel does, so the taps' weights round the same way."""
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)
  src = np.maximum(scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5), f32(0))
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  w_hi = np.clip(src - lo.astype(f32), f32(0), f32(1))
  w_lo = f32(1) - w_hi
  m = np.zeros((out_size, in_size), f32)
  np.add.at(m, (np.arange(out_size), lo), w_lo)
  np.add.at(m, (np.arange(out_size), hi), w_hi)
  return m


def resize_bilinear(x: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """[B, H, W, C] -> [B, h, w, C] as torch's bilinear F.interpolate (align_corners=False)."""
  h, w = (size, size) if isinstance(size, int) else size
  if x.shape[1:3] == (h, w):
    return x
  my = jnp.asarray(bilinear_matrix(h, x.shape[1]))
  mx = jnp.asarray(bilinear_matrix(w, x.shape[2]))
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("yh,bhwc->bywc", my, x, precision=hi)
  return jnp.einsum("xw,bywc->byxc", mx, x, precision=hi)
