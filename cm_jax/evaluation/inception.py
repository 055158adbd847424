"""The FID Inception-v3 (the 2015 TensorFlow graph) in flax.linen (docs/maths.md §9).

This is the network behind pytorch-fid's `pt_inception-2015-12-05` weights, block for block as
pytorch-fid's `fid_inception_v3` builds it: torchvision's Inception-v3 stem and Mixed_6a/7a, with
the FID variants of the other mixed blocks (average pools that do not count padding; a max pool in
the last block's pool branch). Outputs the pool3 features [B, 2048] (FID) and the 1008-way logits
[B, 1008] (Inception Score). Weights come from `python -m cm_jax.convert inception`.

Inputs are images [B, H, W, 3] with values in [0, 1] (uint8 / 255). As pytorch-fid does, they are
resized bilinearly to 299 x 299 (half-pixel centres, no antialiasing: torch's
`F.interpolate(mode='bilinear', align_corners=False)`), then scaled to [-1, 1].
The resize is a separate function so the network itself compiles once, at 299 x 299, whatever
the sample resolution.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm_jax import weight_store
from cm_jax.models.resize import resize_bilinear

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3  # torchvision's BasicConv2d
KIND = "fid_inception_v3_2015"
CONVERT_COMMAND = ("python -m cm_jax.convert inception "
                   "--src=pt_inception-2015-12-05-6726825d.pth --out=DIR")


def preprocess(images: jax.Array) -> jax.Array:
  """[B, H, W, 3] uint8 (or float in [0, 255]) -> float32 [B, 299, 299, 3] in [-1, 1]."""
  x = images.astype(jnp.float32) / 255.0
  x = resize_bilinear(x, INPUT_SIZE)
  return 2.0 * x - 1.0


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (inference statistics, eps 1e-3) -> ReLU, as torchvision's
  BasicConv2d. Parameters: kernel [kh, kw, in, out]; scale, bias, mean, var [out]."""
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        self.kernel + (x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride),
                                     ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    inv = scale * jax.lax.rsqrt(var + BN_EPS)
    return nn.relu(y * inv + (bias - mean * inv))


def _avg_pool_same(x):
  """3x3 stride-1 average pool, padding 1, padding not counted (FID blocks)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x, stride=2, padding="VALID"):
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


def _cat(xs: Sequence[jax.Array]) -> jax.Array:
  return jnp.concatenate(xs, axis=-1)


class InceptionA(nn.Module):  # FIDInceptionA
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return _cat([b1, b5, b3, bp])


class InceptionB(nn.Module):  # torchvision's InceptionB (Mixed_6a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
    return _cat([b3, bd, _max_pool(x)])


class InceptionC(nn.Module):  # FIDInceptionC
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return _cat([b1, b7, bd, bp])


class InceptionD(nn.Module):  # torchvision's InceptionD (Mixed_7a)
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
    return _cat([b3, b7, _max_pool(x)])


class InceptionE(nn.Module):  # FIDInceptionE_1 (avg pool) / FIDInceptionE_2 (max pool)
  pool: str  # 'avg' | 'max'

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = _cat([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
               BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)])
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = _cat([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
               BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)])
    pooled = (_avg_pool_same(x) if self.pool == "avg"
              else _max_pool(x, stride=1, padding=((1, 1), (1, 1))))
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return _cat([b1, b3, bd, bp])


class InceptionV3(nn.Module):
  """[B, 299, 299, 3] in [-1, 1] (see `preprocess`) -> (pool3 [B, 2048], logits [B, 1008])."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    logits = nn.Dense(NUM_LOGITS, name="fc")(pool3)  # [B, 1008]
    return pool3, logits


def param_template() -> dict:
  """The parameter tree as ShapeDtypeStructs (traced, never run)."""
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: InceptionV3().init(jax.random.PRNGKey(0), x)["params"], dummy)


def load(path: str) -> dict:
  """Converted FID Inception params (NumPy) from a directory written by the converter."""
  params, _ = weight_store.load(path, KIND, param_template(), CONVERT_COMMAND)
  return params


def apply(params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """uint8 images [B, H, W, 3] -> (pool3 [B, 2048], logits [B, 1008]), float32."""
  return InceptionV3().apply({"params": params}, preprocess(images))
