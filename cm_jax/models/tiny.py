"""A small UNet for the digits default: a patchify stem, then a UNet on the coarse grid.

At 16x16 with patch 2 the UNet works at 8x8 and 4x4 (docs/maths.md §13: this uses a CPU budget
far better than a full-resolution UNet or an MLP).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cm_jax.errors import UserError
from cm_jax.models import layers


class TinyUNet(nn.Module):
  out_channels: int
  channels: int = 64
  channel_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  patch_size: int = 2
  attn_resolutions: Sequence[int] = (4,)
  dropout: float = 0.0
  fourier_scale: float = 16.0
  emb_dim: int = 256
  num_classes: int = 0   # > 0: class-conditional through a learned label embedding
  time_inputs: int = 1   # 2: noise is [B, 2] (MeanFlow's t and t - r), each embedded apart
  dtype: Any = None      # compute dtype (None = float32); parameters are always float32

  @nn.compact
  def __call__(self, x, noise, labels: Optional[jnp.ndarray] = None, train: bool = False):
    """x: [B, H, W, C] (already scaled by c_in); noise: [B] c_noise ([B, 2] with two time
    inputs); labels: [B] int or None."""
    b, height, width, _ = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise UserError(f"Image size {height}x{width} is not divisible by patch_size {p}.")
    fourier = lambda n: layers.GaussianFourierEmbedding(self.emb_dim, self.fourier_scale)(n)
    emb = layers.embed_times(noise, self.time_inputs, fourier)
    dt = self.dtype
    emb = nn.Dense(self.emb_dim)(emb)
    emb = nn.Dense(self.emb_dim)(nn.swish(emb))
    if self.num_classes:
      if labels is None:
        raise UserError("This model is class-conditional: pass labels.")
      emb = emb + nn.Embed(self.num_classes, self.emb_dim)(labels)
    if dt is not None:
      x, emb = x.astype(dt), emb.astype(dt)

    # [B, H, W, C] -> [B, H/p, W/p, p*p*C]
    h = x.reshape(b, height // p, p, width // p, p, -1).transpose(0, 1, 3, 2, 4, 5)
    h = h.reshape(b, height // p, width // p, -1)
    h = nn.Conv(self.channels, (3, 3), dtype=dt)(h)

    skips = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = layers.ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = layers.SelfAttention(dt)(h)
        skips.append(h)
      if level != len(self.channel_mult) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dt)(h)
        skips.append(h)

    h = layers.ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)
    h = layers.SelfAttention(dt)(h)
    h = layers.ResBlock(h.shape[-1], self.dropout, dt)(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = layers.ResBlock(self.channels * mult, self.dropout, dt)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = layers.SelfAttention(dt)(h)
      if level != 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.Conv(h.shape[-1], (3, 3), dtype=dt)(h)

    h = nn.swish(layers.group_norm(h.shape[-1], dt)(h))
    h = nn.Conv(p * p * self.out_channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)
    h = h.astype(jnp.float32)
    # [B, H/p, W/p, p*p*C] -> [B, H, W, C]
    h = h.reshape(b, height // p, width // p, p, p, self.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return h.reshape(b, height, width, self.out_channels)
