"""NCSN++ (Song et al., score SDE), the CIFAR-10 network of CM and iCT (docs/maths.md §12).

The configuration the CM JAX release trains: BigGAN-style residual blocks that resample with the
FIR kernel [1, 3, 3, 1], skip_rescale, progressive_input 'residual' (the input image is
FIR-downsampled with a convolution alongside the encoder and added at every level),
progressive 'none', GroupNorm(min(C/4, 32)), swish, zero-initialised output layers, and a
Gaussian Fourier embedding of c_noise = 0.25 ln(sigma) followed by Dense(4 nf) -> Dense(4 nf).
With nf 128, ch_mult (2, 2, 2), 4 blocks per level and attention at 16 px (and in the middle)
the parameter count is the released definition's, 56,395,651.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm_jax.errors import UserError
from cm_jax.models import layers

_RSQRT2 = 1.0 / math.sqrt(2.0)


class FourierEmbedding(nn.Module):
  """[sin, cos](2 pi c_noise W), W [size] ~ N(0, scale^2), never trained (the release's
  GaussianFourierProjection; W is a parameter, so it counts and is checkpointed)."""
  size: int
  scale: float

  @nn.compact
  def __call__(self, noise):  # [B] -> [B, 2 size], float32
    w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.size,), jnp.float32)
    proj = noise.astype(jnp.float32)[:, None] * jax.lax.stop_gradient(w)[None, :] * (2 * math.pi)
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


class BigGANResBlock(nn.Module):
  """norm -> swish -> [FIR up/down] -> conv3x3 -> + Dense(emb) -> norm -> swish -> dropout ->
  zero conv3x3, plus a 1x1 shortcut when the shape changes; (x + h) / sqrt 2."""
  out_ch: Optional[int] = None
  up: bool = False
  down: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):  # x [B, H, W, C], emb [B, E]
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = nn.swish(layers.norm(c, dtype=self.dtype)(x))
    if self.up:
      h, x = layers.fir_upsample(h), layers.fir_upsample(x)
    elif self.down:
      h, x = layers.fir_downsample(h), layers.fir_downsample(x)
    h = layers.conv(out_ch, 3, dtype=self.dtype)(h)
    h = h + layers.dense(out_ch, dtype=self.dtype)(nn.swish(emb))[:, None, None, :]
    h = nn.swish(layers.norm(out_ch, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = layers.conv(out_ch, 3, dtype=self.dtype, init_scale=0.0)(h)
    if c != out_ch or self.up or self.down:
      x = layers.conv(out_ch, 1, dtype=self.dtype)(x)
    return (x + h) * _RSQRT2


class NCSNpp(nn.Module):
  out_channels: int
  channels: int = 128                      # nf
  channel_mult: Sequence[int] = (2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)  # in pixels; the middle (lowest) level always attends
  dropout: float = 0.0
  fourier_scale: float = 16.0              # CM 16; iCT 0.02
  num_classes: int = 0                     # > 0: a label embedding is added to the time embedding
  time_inputs: int = 1                     # 2: noise [B, 2] (MeanFlow's t, t - r)
  dtype: jnp.dtype = jnp.float32           # compute dtype; parameters are float32
  remat: str = "none"                      # none | dots | full (layers.rematerialised)

  @nn.compact
  def __call__(self, x, noise, labels: Optional[jnp.ndarray] = None, train: bool = False):
    """x: [B, H, W, C] (scaled by c_in); noise: [B] c_noise = 0.25 ln sigma; labels: [B] int.

    Returns F: [B, H, W, out_channels], float32.
    """
    check_resolutions("ncsnpp", x.shape[1:3], len(self.channel_mult), self.attn_resolutions)
    nf, dt = self.channels, self.dtype
    num_levels = len(self.channel_mult)
    fourier = lambda n: FourierEmbedding(nf, self.fourier_scale)(n)       # [B, 2 nf] each
    emb = layers.embed_times(noise, self.time_inputs, fourier)
    emb = layers.time_mlp(emb, 4 * nf, self.num_classes, labels, dt)
    block_cls = layers.rematerialised(BigGANResBlock, self.remat, (3,))   # train is static
    attn_cls = layers.rematerialised(layers.MultiHeadAttention, self.remat)
    block = lambda **kw: block_cls(dropout=self.dropout, dtype=dt, **kw)
    attn = lambda: attn_cls(skip_rescale=True, dtype=dt)

    x = x.astype(dt)
    pyramid = x                                                            # progressive_input
    hs = [layers.conv(nf, 3, dtype=dt)(x)]
    for level in range(num_levels):
      for _ in range(self.num_res_blocks):
        h = block(out_ch=nf * self.channel_mult[level])(hs[-1], emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level != num_levels - 1:
        h = block(down=True)(hs[-1], emb, train)
        pyramid = layers.FIRConvDown(h.shape[-1], dtype=dt)(pyramid)
        pyramid = (pyramid + h) * _RSQRT2                                   # 'residual'
        h = pyramid
        hs.append(h)

    h = hs[-1]
    h = block()(h, emb, train)
    h = attn()(h)
    h = block()(h, emb, train)

    for level in reversed(range(num_levels)):
      for _ in range(self.num_res_blocks + 1):
        h = block(out_ch=nf * self.channel_mult[level])(
            jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
      if h.shape[1] in self.attn_resolutions:  # once per level, after its blocks (as released)
        h = attn()(h)
      if level != 0:
        h = block(up=True)(h, emb, train)
    assert not hs

    # The output head in float32, as the PyTorch release's fp16 mode keeps it.
    h = nn.swish(layers.norm(h.shape[-1], dtype=jnp.float32)(h.astype(jnp.float32)))
    return layers.conv(self.out_channels, 3, dtype=jnp.float32, init_scale=0.0)(h)


def check_resolutions(name: str, spatial, num_levels: int, attn_resolutions) -> None:
  """Square images divisible by 2^(levels-1); every attention resolution must occur."""
  height, width = spatial
  factor = 2 ** (num_levels - 1)
  if height != width or height % factor:
    raise UserError(
        f"{name}: a {height}x{width} image does not fit {num_levels} levels (square images "
        f"whose side is divisible by {factor} = 2^(len(channel_mult) - 1)); change "
        "data.resolution or model.channel_mult.")
  present = [height // 2 ** i for i in range(num_levels)]
  missing = sorted(set(int(r) for r in attn_resolutions) - set(present))
  if missing:
    raise UserError(
        f"{name}: model.attn_resolutions {list(attn_resolutions)} (in pixels) include "
        f"{missing}, which never occur; this network works at {present}.")
