"""Building blocks shared by the networks."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class GaussianFourierEmbedding(nn.Module):
  """[sin, cos](2 pi c_noise W), W ~ N(0, scale^2) drawn at init and never trained.

  NCSN++ uses scale 16; iCT uses 0.02, which makes 1-step samples from sigma_max work.
  """
  dim: int
  scale: float

  @nn.compact
  def __call__(self, noise):  # [B] -> [B, dim]
    w = self.param("w", nn.initializers.normal(stddev=self.scale), (self.dim // 2,))
    proj = 2 * math.pi * noise[:, None].astype(jnp.float32) * jax.lax.stop_gradient(w)[None, :]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def group_norm(channels: int) -> nn.GroupNorm:
  """GroupNorm(min(C/4, 32)) as NCSN++ does; fewer groups where that does not divide C."""
  groups = max(1, min(channels // 4, 32))
  while channels % groups:
    groups -= 1
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6)


class ResBlock(nn.Module):
  """Pre-norm residual block with an additive time/class embedding and dropout."""
  channels: int
  dropout: float

  @nn.compact
  def __call__(self, x, emb, train: bool):  # x [B, H, W, Cin], emb [B, E]
    h = nn.swish(group_norm(x.shape[-1])(x))
    h = nn.Conv(self.channels, (3, 3))(h)
    h = h + nn.Dense(self.channels)(nn.swish(emb))[:, None, None, :]
    h = nn.swish(group_norm(self.channels)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1))(x)
    return (x + h) / math.sqrt(2.0)  # skip_rescale keeps activations O(1) through depth


class SelfAttention(nn.Module):
  """Single-head spatial self-attention with a residual; jax.nn.dot_product_attention lets GPUs
  use a fused kernel and stays differentiable in forward mode (sCM's JVP)."""

  @nn.compact
  def __call__(self, x):  # [B, H, W, C]
    b, h, w, c = x.shape
    qkv = nn.Dense(3 * c)(group_norm(c)(x)).reshape(b, h * w, 3, 1, c)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    out = nn.Dense(c, kernel_init=nn.initializers.zeros)(out.reshape(b, h, w, c))
    return (x + out) / math.sqrt(2.0)
