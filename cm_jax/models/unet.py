"""The ADM UNet (Dhariwal & Nichol, guided-diffusion), the ImageNet 64 and LSUN 256 network of
the CM PyTorch release (docs/maths.md §12).

Layout as released: a 3x3 stem; per level `num_res_blocks` residual blocks (+ attention where the
feature map's side, in pixels, is in `attn_resolutions`), then a down-sampling residual block
(or a strided conv without `resblock_updown`); a middle ResBlock-Attention-ResBlock; a decoder of
`num_res_blocks + 1` blocks per level on the concatenated skips, with an up-sampling block at the
end of every level but the last; GroupNorm(32) -> SiLU -> zero conv3x3. Residual blocks add the
time embedding, or with `use_scale_shift_norm` apply it FiLM-style after the second norm.

Time input: the network gets c_noise = 0.25 ln sigma and feeds 1000 c_noise to guided-diffusion's
sinusoidal embedding ([cos, sin], max period 10^4) of width `channels`, then Linear(4 ch) -> SiLU
-> Linear(4 ch). The time MLP and the output head run in float32 (as the release's fp16 mode
keeps them); the torso in `dtype`. Attention: heads of `num_head_channels`, q/k/v as three
C-wide blocks of the qkv projection, the "(three h d)" order of the CM release's flash attention
(guided-diffusion's legacy attention orders them per head instead: `qkv_layout='heads'`).
Initialisers: DDPM's fan-avg uniform (the PyTorch release uses torch's defaults); zero output
convs as released.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cm_jax.models import layers
from cm_jax.models.ncsnpp import check_resolutions

_EPS = 1e-5   # torch GroupNorm's default, as guided-diffusion's GroupNorm32


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """guided-diffusion's sinusoidal embedding: [cos(t f), sin(t f)], f_i = max_period^(-i/half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def _norm(c, dtype):
  return layers.norm(c, groups=32, epsilon=_EPS, dtype=dtype)


def _avg_pool2(x):  # [B, H, W, C] -> [B, H/2, W/2, C]
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _nearest_up2(x):  # [B, H, W, C] -> [B, 2H, 2W, C]
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class ADMResBlock(nn.Module):
  out_ch: Optional[int] = None
  up: bool = False
  down: bool = False
  use_scale_shift_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, train: bool):  # x [B, H, W, C], emb [B, E]
    c = x.shape[-1]
    out_ch = self.out_ch or c
    h = nn.silu(_norm(c, self.dtype)(x))
    if self.up:
      h, x = _nearest_up2(h), _nearest_up2(x)
    elif self.down:
      h, x = _avg_pool2(h), _avg_pool2(x)
    h = layers.conv(out_ch, 3, dtype=self.dtype)(h)
    e = layers.dense(2 * out_ch if self.use_scale_shift_norm else out_ch,
                     dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = _norm(out_ch, self.dtype)(h) * (1 + scale) + shift
    else:
      h = _norm(out_ch, self.dtype)(h + e)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = layers.conv(out_ch, 3, dtype=self.dtype, init_scale=0.0)(h)
    if out_ch != c:
      x = layers.conv(out_ch, 1, dtype=self.dtype)(x)
    return x + h


class ADMUNet(nn.Module):
  out_channels: int
  channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  num_res_blocks: int = 3
  attn_resolutions: Sequence[int] = (32, 16, 8)   # in pixels
  num_head_channels: int = 64
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  dropout: float = 0.0
  num_classes: int = 0
  time_inputs: int = 1          # 2: noise [B, 2] (MeanFlow's t, t - r)
  time_scale: float = 1000.0    # the release feeds 1000 * 0.25 ln sigma
  dtype: jnp.dtype = jnp.float32
  remat: str = "none"           # none | dots | full (layers.rematerialised)

  @nn.compact
  def __call__(self, x, noise, labels: Optional[jnp.ndarray] = None, train: bool = False):
    """x: [B, H, W, C] (scaled by c_in); noise: [B] c_noise = 0.25 ln sigma; labels: [B] int.

    Returns F: [B, H, W, out_channels], float32.
    """
    check_resolutions("adm", x.shape[1:3], len(self.channel_mult), self.attn_resolutions)
    mc, dt = self.channels, self.dtype
    sinusoid = lambda n: timestep_embedding(self.time_scale * n, mc)
    emb = layers.time_mlp(layers.embed_times(noise, self.time_inputs, sinusoid), 4 * mc,
                          self.num_classes, labels, dt)
    block_cls = layers.rematerialised(ADMResBlock, self.remat, (3,))   # train is static
    attn_cls = layers.rematerialised(layers.MultiHeadAttention, self.remat)
    block = lambda **kw: block_cls(use_scale_shift_norm=self.use_scale_shift_norm,
                                   dropout=self.dropout, dtype=dt, **kw)
    attn = lambda: attn_cls(head_channels=self.num_head_channels, groups=32, epsilon=_EPS,
                            dtype=dt)
    num_levels = len(self.channel_mult)

    h = layers.conv(mc * self.channel_mult[0], 3, dtype=dt)(x.astype(dt))
    hs = [h]
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        h = block(out_ch=mc * mult)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if level != num_levels - 1:
        if self.resblock_updown:
          h = block(down=True)(h, emb, train)
        else:
          h = layers.conv(h.shape[-1], 3, stride=2, dtype=dt, padding=((1, 1), (1, 1)))(h)
        hs.append(h)

    h = block()(h, emb, train)
    h = attn()(h)
    h = block()(h, emb, train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = block(out_ch=mc * mult)(jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        if level and i == self.num_res_blocks:
          if self.resblock_updown:
            h = block(up=True)(h, emb, train)
          else:
            h = layers.conv(h.shape[-1], 3, dtype=dt)(_nearest_up2(h))
    assert not hs

    h = nn.silu(_norm(h.shape[-1], jnp.float32)(h.astype(jnp.float32)))
    return layers.conv(self.out_channels, 3, dtype=jnp.float32, init_scale=0.0)(h)
