"""LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018) in flax.linen, as the `lpips` package
computes it: scale the [-1, 1] inputs by its ScalingLayer, VGG16 features at relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, unit-normalise each over channels, square the difference, weight the
channels by the linear heads (1x1 convs, no bias), average over space, sum over the five layers.

Weights: torchvision's VGG16 file + the LPIPS v0.1 heads, converted once by
`python -m cm_jax.convert lpips`. The distance (docs/maths.md §4: inputs below 256 px are resized
bilinearly to 224 first) is `cm_jax.distances.get_distance('lpips', ...)`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import weight_store
from cm_jax.errors import UserError
from cm_jax.models.resize import resize_bilinear

KIND = "lpips_vgg16_v0.1"
CONVERT_COMMAND = ("python -m cm_jax.convert lpips --vgg=vgg16-397923af.pth "
                   "--heads=LPIPS_v0.1_vgg.pth --out=DIR")
# VGG16 `features` stages: conv widths, each stage ending at the relu LPIPS taps; a 2x2 max pool
# precedes every stage but the first. Torchvision indices of the convs: 0 2 | 5 7 | 10 12 14 |
# 17 19 21 | 24 26 28.
STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TORCH_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
SHIFT = np.array([-.030, -.088, -.188], np.float32)
SCALE = np.array([.458, .448, .450], np.float32)
RESIZE_BELOW = 256
RESIZE_TO = 224


class LPIPS(nn.Module):
  """(a, b) in [-1, 1], [B, H, W, 3] -> [B] distances. Params: conv{i} (kernel, bias), lin{k}."""

  @nn.compact
  def __call__(self, a, b):
    x = jnp.concatenate([a, b], axis=0).astype(jnp.float32)
    x = (x - SHIFT) / SCALE
    total = 0.0
    conv = 0
    for stage, widths in enumerate(STAGES):
      if stage:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for width in widths:
        x = nn.relu(nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{conv}")(x))
        conv += 1
      fa, fb = jnp.split(x, 2, axis=0)
      fa = fa / (jnp.sqrt(jnp.sum(fa * fa, axis=-1, keepdims=True)) + 1e-10)
      fb = fb / (jnp.sqrt(jnp.sum(fb * fb, axis=-1, keepdims=True)) + 1e-10)
      head = self.param(f"lin{stage}", nn.initializers.uniform(1.0), (widths[-1],))  # [C]
      total = total + jnp.mean(jnp.square(fa - fb) @ head, axis=(1, 2))
    return total


def param_template() -> dict:
  dummy = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(lambda x: LPIPS().init(jax.random.PRNGKey(0), x, x)["params"], dummy)


@functools.lru_cache(maxsize=4)
def load(path: str):
  """Converted LPIPS params (NumPy) from a directory written by the converter."""
  if not path:
    raise UserError("distance='lpips' needs converted VGG16 + LPIPS v0.1 weights: set "
                    "--config.consistency.lpips_weights=DIR, made once by: " + CONVERT_COMMAND)
  params, _ = weight_store.load(path, KIND, param_template(), CONVERT_COMMAND)
  return params


def lpips_distance(params, a, b) -> jax.Array:
  """[B] LPIPS between [B, H, W, C] batches in [-1, 1]; below 256 px both are resized to 224
  (bilinear, as the CM release does before its LPIPS). One channel is repeated to three."""
  if a.shape[-1] == 1:
    a, b = jnp.repeat(a, 3, axis=-1), jnp.repeat(b, 3, axis=-1)
  if a.shape[1] < RESIZE_BELOW:
    a, b = resize_bilinear(a, RESIZE_TO), resize_bilinear(b, RESIZE_TO)
  return LPIPS().apply({"params": params}, a, b)
