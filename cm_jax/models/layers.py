"""Building blocks shared by the networks."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm_jax.errors import UserError


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


def group_norm(channels: int, dtype=None) -> nn.GroupNorm:
  """GroupNorm(min(C/4, 32)) as NCSN++ does; fewer groups where that does not divide C.

  Statistics are reduced in float32 whatever `dtype` (the output dtype) is."""
  groups = max(1, min(channels // 4, 32))
  while channels % groups:
    groups -= 1
  return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32)


class ResBlock(nn.Module):
  """Pre-norm residual block with an additive time/class embedding and dropout."""
  channels: int
  dropout: float
  dtype: Any = None   # compute dtype (None: that of the inputs); parameters are float32

  @nn.compact
  def __call__(self, x, emb, train: bool):  # x [B, H, W, Cin], emb [B, E]
    dt = self.dtype
    h = nn.swish(group_norm(x.shape[-1], dt)(x))
    h = nn.Conv(self.channels, (3, 3), dtype=dt)(h)
    h = h + nn.Dense(self.channels, dtype=dt)(nn.swish(emb))[:, None, None, :]
    h = nn.swish(group_norm(self.channels, dt)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt)(h)
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1), dtype=dt)(x)
    return (x + h) / math.sqrt(2.0)  # skip_rescale keeps activations O(1) through depth


class SelfAttention(nn.Module):
  """Single-head spatial self-attention with a residual; jax.nn.dot_product_attention lets GPUs
  use a fused kernel and stays differentiable in forward mode (sCM's JVP)."""
  dtype: Any = None

  @nn.compact
  def __call__(self, x):  # [B, H, W, C]
    b, h, w, c = x.shape
    qkv = nn.Dense(3 * c, dtype=self.dtype)(group_norm(c, self.dtype)(x)).reshape(b, h * w, 3, 1, c)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    out = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype)(out.reshape(b, h, w, c))
    return (x + out) / math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# Pieces of the paper networks (NCSN++, ADM). Every module takes `dtype` (the compute dtype);
# parameters are always float32, so the optimizer state and EMAs stay float32 under bfloat16.
# ---------------------------------------------------------------------------------------------

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """'float32' | 'bfloat16' -> the jnp dtype; anything else is a clear error."""
  if name not in DTYPES:
    raise UserError(f"Unknown model.dtype {name!r}; choose one of {', '.join(DTYPES)} "
                    "(parameters, optimizer state and EMA stay float32 either way).")
  return DTYPES[name]


REMAT_MODES = ("none", "dots", "full")


def check_remat(mode: str) -> str:
  """`mode` if it is one of REMAT_MODES, else a clear error."""
  if mode not in REMAT_MODES:
    raise UserError(f"Unknown model.remat {mode!r}; choose one of {', '.join(REMAT_MODES)} "
                    "(dots: recompute norms and activations in the backward pass; full: "
                    "recompute whole blocks).")
  return mode


@functools.lru_cache(maxsize=None)
def rematerialised(cls, mode: str, static_argnums: tuple = ()):
  """`cls` under jax.checkpoint: 'dots' keeps its convolution and matmul outputs for the backward
  pass and recomputes the rest (norms, activations, softmax: cheap, and most of the memory);
  'full' keeps only its inputs and recomputes the whole block (one more forward pass).
  static_argnums count `self` as 0. The class keeps its name, so parameter names, checkpoints
  and converted weights are the same in every mode."""
  if check_remat(mode) == "none":
    return cls
  policy = jax.checkpoint_policies.dots_saveable if mode == "dots" else None
  wrapped = nn.remat(cls, policy=policy, static_argnums=static_argnums)
  wrapped.__name__ = cls.__name__
  return wrapped


def fan_avg_uniform(scale: float = 1.0):
  """DDPM's initialiser (variance scaling, fan_avg, uniform); scale 0 gives zeros."""
  if scale == 0.0:
    return nn.initializers.zeros
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def conv(features: int, kernel: int = 3, *, dtype, init_scale: float = 1.0, stride: int = 1,
         padding="SAME", name=None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 kernel_init=fan_avg_uniform(init_scale), dtype=dtype,
                 param_dtype=jnp.float32, name=name, conv_general_dilated=cpu_fast_conv)


def dense(features: int, *, dtype, init_scale: float = 1.0, name=None) -> nn.Dense:
  return nn.Dense(features, kernel_init=fan_avg_uniform(init_scale), dtype=dtype,
                  param_dtype=jnp.float32, name=name)


def embed_times(noise, time_inputs: int, embed: Callable[[jnp.ndarray], jnp.ndarray]):
  """c_noise [B] (one time input) or [B, k] (k inputs: MeanFlow's (t, t - r)) -> features.

  Each input gets its own embedding (`embed` builds a new submodule per call) and the features
  sit side by side, so the time MLP's first layer is a sum of one linear map per input. One
  input keeps the parameter names of every network trained before two existed.
  """
  if time_inputs == 1:
    if noise.ndim != 1:
      raise ValueError(f"This network takes one time input per sample ([B]), got {noise.shape}.")
    return embed(noise)
  if noise.ndim != 2 or noise.shape[1] != time_inputs:
    raise ValueError(f"This network takes {time_inputs} time inputs per sample "
                     f"([B, {time_inputs}]), got {noise.shape}.")
  return jnp.concatenate([embed(noise[:, i]) for i in range(time_inputs)], axis=-1)


def time_mlp(features, width: int, num_classes: int, labels, dtype):
  """Linear(width) -> swish -> Linear(width) on the noise features, plus a label embedding when
  num_classes > 0, all in float32; returned in `dtype`. Called inside a network's compact
  __call__, so its layers are the caller's Dense_0, Dense_1 and Embed_0."""
  emb = dense(width, dtype=jnp.float32)(features)
  emb = dense(width, dtype=jnp.float32)(nn.swish(emb))
  if num_classes:
    if labels is None:
      raise ValueError("This model is class-conditional: pass labels.")
    emb = emb + nn.Embed(num_classes, width, param_dtype=jnp.float32)(labels)
  return emb.astype(dtype)


def norm(channels: int, *, groups: int | None = None, epsilon: float = 1e-6, dtype) -> nn.GroupNorm:
  """GroupNorm with statistics in float32 (Flax reduces in >= float32), output in `dtype`.

  groups=None: NCSN++'s min(C/4, 32), which must divide C.
  """
  g = groups if groups is not None else min(channels // 4, 32)
  if g < 1 or channels % g:
    raise UserError(f"GroupNorm: {g} groups do not divide {channels} channels; use channel "
                    "counts that are multiples of 32 (or of 4 below 128).")
  return nn.GroupNorm(num_groups=g, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32)


# FIR resampling with the separable kernel [1, 3, 3, 1] (StyleGAN2's upfirdn2d, which NCSN++
# uses), written as strided slices, pads and weighted sums instead of a depthwise convolution:
# XLA fuses them into a few cheap elementwise loops on CPU and GPU alike, and their gradients
# are the same kind of ops. Zero padding outside the image, exactly as upfirdn2d with the
# paddings of `downsample_2d` / `upsample_2d` / `conv_downsample_2d`.

def _shift(x, axis: int, offset: int):
  """y[i] = x[i + offset] along `axis`, zero where i + offset is outside."""
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  if offset > 0:
    pad[axis] = (0, offset)
    return jax.lax.slice_in_dim(jnp.pad(x, pad), offset, offset + n, axis=axis)
  pad[axis] = (-offset, 0)
  return jax.lax.slice_in_dim(jnp.pad(x, pad), 0, n, axis=axis)


def _fir_down_axis(x, axis: int):
  """out[i] = (x[2i-1] + 3 x[2i] + 3 x[2i+1] + x[2i+2]) / 8 along `axis` (length halves)."""
  even = jax.lax.slice_in_dim(x, 0, None, stride=2, axis=axis)
  odd = jax.lax.slice_in_dim(x, 1, None, stride=2, axis=axis)
  return (_shift(odd, axis, -1) + 3 * (even + odd) + _shift(even, axis, 1)) * 0.125


def _fir_up_axis(x, axis: int):
  """out[2i] = (x[i-1] + 3 x[i]) / 4, out[2i+1] = (3 x[i] + x[i+1]) / 4 (length doubles)."""
  even = (_shift(x, axis, -1) + 3 * x) * 0.25
  odd = (3 * x + _shift(x, axis, 1)) * 0.25
  out = jnp.stack([even, odd], axis=axis + 1)
  shape = list(x.shape)
  shape[axis] *= 2
  return out.reshape(shape)


def fir_downsample(x):
  """[B, H, W, C] -> [B, H/2, W/2, C]: FIR [1,3,3,1] low-pass, then every second pixel."""
  return _fir_down_axis(_fir_down_axis(x, 1), 2)


def fir_upsample(x):
  """[B, H, W, C] -> [B, 2H, 2W, C]: zero insertion, then FIR [1,3,3,1] (gain 4)."""
  return _fir_up_axis(_fir_up_axis(x, 1), 2)


def _fir_blur_axis(x, axis: int):
  """Pad 2 zeros on each side, then the valid 4-tap filter [1,3,3,1]/8: length n -> n + 1."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (2, 2)
  xp = jnp.pad(x, pad)
  n = x.shape[axis] + 1
  tap = lambda k: jax.lax.slice_in_dim(xp, k, k + n, axis=axis)
  return (tap(0) + tap(3) + 3 * (tap(1) + tap(2))) * 0.125


class FIRConvDown(nn.Module):
  """StyleGAN2's fused `conv_downsample_2d` (kernel 3): FIR blur, then a stride-2 3x3 conv."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, Cin] -> [B, H/2, W/2, features]
    x = _fir_blur_axis(_fir_blur_axis(x, 1), 2)
    return conv(self.features, 3, stride=2, padding="VALID", dtype=self.dtype)(x)


class MultiHeadAttention(nn.Module):
  """Spatial self-attention with a residual, through jax.nn.dot_product_attention.

  heads of `head_channels` each (0 = one head over all channels). `qkv_layout`: 'split' puts
  q, k, v in consecutive C-wide blocks (NCSN++'s three NIN layers); 'heads' groups the 3C
  channels per head as [head, (q, k, v), ch] (ADM's legacy QKV order), so converted weights line
  up. Logits and softmax run in float32 (jax.nn.dot_product_attention does so for bf16 inputs).
  The XLA implementation is differentiable in both modes, so sCM's jax.jvp passes through.
  """
  head_channels: int = 0
  skip_rescale: bool = False
  qkv_layout: str = "split"
  groups: int | None = None
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  implementation: str | None = None   # jax.nn.dot_product_attention's; None = XLA

  @nn.compact
  def __call__(self, x):  # [B, H, W, C]
    b, h, w, c = x.shape
    if self.head_channels:
      if c % self.head_channels:
        raise UserError(f"Attention over {c} channels does not split into heads of "
                        f"{self.head_channels}; change model.num_head_channels.")
      heads = c // self.head_channels
    else:
      heads = 1
    ch = c // heads
    y = norm(c, groups=self.groups, epsilon=self.epsilon, dtype=self.dtype)(x)
    qkv = dense(3 * c, dtype=self.dtype, name="qkv")(y.reshape(b, h * w, c))
    if self.qkv_layout == "heads":
      qkv = qkv.reshape(b, h * w, heads, 3, ch)
      q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    else:
      q, k, v = (t.reshape(b, h * w, heads, ch) for t in jnp.split(qkv, 3, axis=-1))
    out = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    out = dense(c, dtype=self.dtype, init_scale=0.0, name="proj_out")(out.reshape(b, h * w, c))
    out = x + out.reshape(b, h, w, c).astype(x.dtype)
    return out / math.sqrt(2.0) if self.skip_rescale else out


# ---------------------------------------------------------------------------------------------
# Convolutions whose gradients XLA:CPU computes at matmul speed.
#
# XLA:CPU runs a 3x3 conv forward near matmul speed, but its weight gradient (a conv with a
# whole-map "kernel" and a 3x3 output) far below it, and its input gradient below the forward's
# speed: on an NCSN++ step that is the biggest single cost. Here the primal stays lax's conv, and
# the tangent is written as one matmul against all nine taps followed by a shifted sum,
# conv(x, w) = sum_ij shift_ij(x @ W[i, j]),  which is linear in (x, w). Reverse mode transposes
# it into one "nine shifted copies of g" loop and two large matmuls (dx = G9 @ W_all^T,
# dw = x^T @ G9), which run near the matmul peak (the figures: README, "Networks and benchmark").
# A custom_jvp, not a custom_vjp, so forward mode (sCM's jax.jvp) and higher derivatives
# still work; with symbolic zeros a JVP that does not perturb the weights (sCM's) costs one
# matmul. A 1x1 conv is simply a matmul. Only used on the CPU backend: GPUs and TPUs get
# lax.conv_general_dilated unchanged.
# ---------------------------------------------------------------------------------------------

CONV3X3_MIN_PIXELS = 8 * 8   # on smaller maps the shifted sum's overhead outweighs the gain
_NHWC = ("NHWC", "HWIO", "NHWC")
_cpu_rewrites = [True]


@contextlib.contextmanager
def plain_convs():
  """Within this block, networks traced use lax.conv_general_dilated on every backend: how the
  benchmark counts a network's own FLOPs (the rewrites also multiply at padding positions) and
  compiles the program a GPU would run."""
  _cpu_rewrites.append(False)
  try:
    yield
  finally:
    _cpu_rewrites.pop()


def _lax_conv3x3(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)


def _taps_matmul(x, w):
  """[B, H, W, Cin] x [3, 3, Cin, Cout] -> [B, H, W, 9 Cout]: x @ w[i, j] for every tap (i, j)
  in row-major order along the last axis."""
  b, h, wd, c = x.shape
  w_all = jnp.transpose(w, (2, 0, 1, 3)).reshape(c, 9 * w.shape[-1])
  return jnp.dot(x.reshape(b * h * wd, c), w_all).reshape(b, h, wd, 9 * w.shape[-1])


def _shifted_tap_sum(y):
  """out[b, p, q] = sum_ij y_ij[b, p + i - 1, q + j - 1] (zero outside): a 'SAME' 3x3 conv given
  every tap's product y = [y_00, ..., y_22] from _taps_matmul.

  Written as a split and nine shifting pads so that its transpose (reverse mode) is nine
  shifting pads of the cotangent and one concatenate: cheap copies, where a 6-D pad-and-slice
  form transposes into a slower sum of nine zero-padded arrays. The optimization barrier (in
  reverse mode: on the assembled cotangent) stays because the NCSN++ step is faster with it
  (README, "Networks and benchmark")."""
  y = jax.lax.optimization_barrier(y)
  parts = jax.lax.split(y, [y.shape[-1] // 9] * 9, axis=3)
  zero = jnp.zeros((), y.dtype)
  out = None
  for k, part in enumerate(parts):   # y_ij placed at offset (2 - i, 2 - j) of an (H+2, W+2) map
    i, j = divmod(k, 3)
    term = jax.lax.pad(part, zero, [(0, 0, 0), (2 - i, i, 0), (2 - j, j, 0), (0, 0, 0)])
    out = term if out is None else out + term
  return out[:, 1:-1, 1:-1, :]


@jax.custom_jvp
def conv3x3_matmul_grads(x, w):
  """[B, H, W, Cin] x [3, 3, Cin, Cout] -> [B, H, W, Cout], 'SAME' padding, stride 1."""
  return _lax_conv3x3(x, w)


def _conv3x3_matmul_grads_jvp(primals, tangents):
  x, w = primals
  dx, dw = tangents
  y = _lax_conv3x3(x, w)
  zero = jax.custom_derivatives.SymbolicZero
  taps = None
  if not isinstance(dx, zero):
    taps = _taps_matmul(dx, w)
  if not isinstance(dw, zero):
    term = _taps_matmul(x, dw)
    taps = term if taps is None else taps + term
  return y, (jnp.zeros_like(y) if taps is None else _shifted_tap_sum(taps))


conv3x3_matmul_grads.defjvp(_conv3x3_matmul_grads_jvp, symbolic_zeros=True)


def _is_nhwc(dimension_numbers, ndim: int) -> bool:
  want = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, _NHWC)
  if dimension_numbers is None:
    return False
  got = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  return got == want


def _conv1x1_as_dot(x, w):
  """A 1x1 stride-1 conv is a matmul over channels. XLA:CPU lowers the weight gradient of a 1x1
  conv as a conv with a whole-map "kernel" behind two layout transposes, many times slower per
  FLOP than the matmul x^T @ g that a dot's gradient is."""
  b, h, w_, c = x.shape
  return jnp.dot(x.reshape(b * h * w_, c), w[0, 0]).reshape(b, h, w_, w.shape[-1])


def cpu_fast_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """lax.conv_general_dilated's signature (what flax's nn.Conv calls). On the CPU backend a
  stride-1 'SAME' 3x3 NHWC conv on a map of >= CONV3X3_MIN_PIXELS pixels goes through
  `conv3x3_matmul_grads`, and a stride-1 unpadded 1x1 NHWC conv through a matmul (same values,
  faster weight gradients). Everything else is unchanged."""
  ones = lambda d: d is None or all(int(v) == 1 for v in d)
  pads = None if isinstance(padding, str) else [tuple(p) for p in padding]
  eligible = (_cpu_rewrites[-1] and jax.default_backend() == "cpu" and lhs.ndim == 4
              and all(int(s) == 1 for s in window_strides) and ones(lhs_dilation)
              and ones(rhs_dilation) and feature_group_count == 1 and precision is None
              and not kwargs and _is_nhwc(dimension_numbers, 4))
  if eligible and tuple(rhs.shape[:2]) == (1, 1) and (padding in ("SAME", "VALID")
                                                   or pads == [(0, 0), (0, 0)]):
    return _conv1x1_as_dot(lhs, rhs)
  if (eligible and tuple(rhs.shape[:2]) == (3, 3) and (padding == "SAME" or pads == [(1, 1), (1, 1)])
      and lhs.shape[1] * lhs.shape[2] >= CONV3X3_MIN_PIXELS):
    return conv3x3_matmul_grads(lhs, rhs)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision, **kwargs)
