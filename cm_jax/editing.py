"""Zero-shot image editing with a consistency model (CM Algorithm 4, docs/maths.md §8), as pure
functions.

An edit is an invertible linear map A on images (orthogonal here, so A^-1 = A^T) and a mask Omega
in A's output space: 1 = generate, 0 = keep the reference's coefficient. The iterative algorithm
alternates a consistency step with the projection x <- A^-1[(A y)(1 - Omega) + (A x) Omega], so
the known part of the reference is reproduced exactly and the model fills in the rest.

`f(x, sigma) -> x0` is a consistency function with parameters and labels bound (sampling.py).
Noise is drawn per sample from `fold_in(key, index)`, so edit i does not depend on the batch.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras
from cm_jax.errors import UserError
from cm_jax.sampling import ConsistencyFn, per_sample_normal

# ITU-R BT.601 luma weights: the luminance a colourisation keeps.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SUPERRES_FACTORS = (2, 4, 8)


class Operator(NamedTuple):
  """An invertible linear map A on images [B, H, W, C] and its inverse."""
  forward: Callable[[jnp.ndarray], jnp.ndarray]
  inverse: Callable[[jnp.ndarray], jnp.ndarray]


IDENTITY = Operator(lambda x: x, lambda a: a)


# ---- orthogonal bases -------------------------------------------------------------------------

def orthogonal_basis(first: Sequence[float]) -> np.ndarray:
  """[d, d] orthogonal matrix whose column 0 is first / |first| (QR of [first, e_2, ..., e_d]).

  `first[0]` must be non-zero (then [first, e_2, ..., e_d] has full rank).
  """
  first = np.asarray(first, np.float64)
  if first[0] == 0:
    raise UserError("orthogonal_basis needs a first vector with a non-zero first entry.")
  m = np.eye(first.size)
  m[:, 0] = first / np.linalg.norm(first)
  q, r = np.linalg.qr(m)
  return q * np.sign(np.diag(r))  # QR fixes columns up to sign: make column 0 = +first/|first|


def colour_basis() -> np.ndarray:
  """[3 (RGB), 3 (axes)] orthogonal; axis 0 is the normalised luminance direction."""
  return orthogonal_basis(LUMA_WEIGHTS)


def patch_basis(factor: int) -> np.ndarray:
  """[p*p, p*p] orthogonal; column 0 is the normalised all-ones vector, i.e. p * the patch mean."""
  return orthogonal_basis(np.ones(factor * factor))


# ---- edit problems: (A, Omega) ----------------------------------------------------------------

def inpainting(mask) -> tuple[Operator, jnp.ndarray]:
  """A = I; Omega = the mask (1 = generate), e.g. [H, W, 1] or per sample [B, H, W, 1]."""
  return IDENTITY, jnp.asarray(mask, jnp.float32)


def colorization(channels: int) -> tuple[Operator, jnp.ndarray]:
  """A = the colour basis per pixel; keep luminance, generate the two other axes."""
  if channels != 3:
    raise UserError(f"Colourisation needs RGB images (3 channels); this model has {channels}.")
  m = jnp.asarray(colour_basis(), jnp.float32)
  op = Operator(lambda x: x @ m, lambda a: a @ m.T)  # [B, H, W, 3] <-> [B, H, W, 3 axes]
  return op, jnp.asarray([0.0, 1.0, 1.0])


def super_resolution(factor: int, height: int, width: int) -> tuple[Operator, jnp.ndarray]:
  """A = the patch basis on every factor x factor patch of every channel; keep the patch means."""
  if factor not in SUPERRES_FACTORS:
    raise UserError(f"Super-resolution factor must be one of {SUPERRES_FACTORS}, got {factor}.")
  if height % factor or width % factor:
    raise UserError(f"Image size {height}x{width} is not divisible by the factor {factor}.")
  p = factor
  q = jnp.asarray(patch_basis(p), jnp.float32)

  def forward(x):
    b, h, w, c = x.shape
    # [B, H, W, C] -> [B, H/p, W/p, C, p*p]
    patches = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return patches.reshape(b, h // p, w // p, c, p * p) @ q

  def inverse(a):
    b, hp, wp, c, _ = a.shape
    # [B, H/p, W/p, C, p*p] -> [B, H, W, C]
    patches = (a @ q.T).reshape(b, hp, wp, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return patches.reshape(b, hp * p, wp * p, c)

  return Operator(forward, inverse), jnp.zeros((p * p,)).at[1:].set(1.0)


# ---- masks (1 = to generate) ------------------------------------------------------------------

def center_mask(height: int, width: int, fraction: float = 0.5) -> np.ndarray:
  """[H, W, 1] float32: a centred box covering `fraction` of each side."""
  mask = np.zeros((height, width, 1), np.float32)
  bh, bw = max(1, round(height * fraction)), max(1, round(width * fraction))
  top, left = (height - bh) // 2, (width - bw) // 2
  mask[top:top + bh, left:left + bw] = 1.0
  return mask


def left_half_mask(height: int, width: int) -> np.ndarray:
  """[H, W, 1] float32: the left half."""
  mask = np.zeros((height, width, 1), np.float32)
  mask[:, :width // 2] = 1.0
  return mask


@functools.partial(jax.jit, static_argnames=("height", "width", "num_strokes"))
def stroke_masks(key, indices, height: int, width: int, num_strokes: int = 4) -> jnp.ndarray:
  """[B, H, W, 1] float32 random thick line segments, mask i from fold_in(key, indices[i])."""
  size = float(min(height, width))
  rows, cols = jnp.meshgrid(jnp.arange(height) + 0.5, jnp.arange(width) + 0.5, indexing="ij")
  pixels = jnp.stack([rows, cols], -1)  # [H, W, 2]

  def stroke(k):
    k_start, k_angle, k_len, k_width = jax.random.split(k, 4)
    start = jax.random.uniform(k_start, (2,)) * jnp.asarray([height, width], jnp.float32)
    angle = jax.random.uniform(k_angle, (), maxval=2 * jnp.pi)
    length = jax.random.uniform(k_len, (), minval=0.3, maxval=0.8) * size
    thickness = jnp.maximum(1.0, jax.random.uniform(k_width, (), minval=0.08, maxval=0.18) * size)
    end = start + length * jnp.stack([jnp.sin(angle), jnp.cos(angle)])
    # Distance from every pixel centre to the segment [start, end].
    d = end - start
    t = jnp.clip(((pixels - start) @ d) / (d @ d), 0.0, 1.0)
    dist = jnp.linalg.norm(pixels - (start + t[..., None] * d), axis=-1)  # [H, W]
    return dist <= thickness / 2

  def one(i):
    keys = jax.random.split(jax.random.fold_in(key, i), num_strokes)
    return jnp.any(jax.vmap(stroke)(keys), axis=0)[..., None].astype(jnp.float32)

  return jax.vmap(one)(jnp.asarray(indices))


# ---- the iterative algorithm ------------------------------------------------------------------

def known_part(op: Operator, y, omega) -> jnp.ndarray:
  """A^-1[(A y)(1 - Omega)]: the reference with the part to generate removed."""
  return op.inverse(op.forward(y) * (1.0 - omega))


def _sigma_vec(sigma, x) -> jnp.ndarray:
  return jnp.full((x.shape[0],), sigma, jnp.float32)


def _continue(f: ConsistencyFn, x, key, indices, sigmas: Sequence[float],
              levels: karras.NoiseLevels, clip: bool, project: Callable) -> jnp.ndarray:
  """Levels 1.. of CM Algorithm 1/4: x = project(f(x + sqrt(s^2 - eps^2) z', s)) for each s."""
  for step, sigma in enumerate(sigmas[1:], start=1):
    z = per_sample_normal(jax.random.fold_in(key, step), indices, x.shape[1:])
    x = f(x + np.sqrt(sigma**2 - levels.sigma_min**2) * z, _sigma_vec(sigma, x))
    x = project(jnp.clip(x, -1.0, 1.0) if clip else x)
  return x


def edit(f: ConsistencyFn, op: Operator, y, omega, key, indices, sigmas: Sequence[float],
         levels: karras.NoiseLevels, clip: bool = True) -> jnp.ndarray:
  """CM Algorithm 4. y: reference [B, H, W, C] in [-1, 1]; omega broadcastable to A y.

  sigmas: decreasing static levels (the first usually T). With Omega = 1 everywhere and A = I
  this is exactly `sampling.multistep_sample` with the same key and indices. x is clipped after
  every f (as the sampler does), before the projection.
  """
  sigmas = [float(s) for s in sigmas]
  known = op.forward(y) * (1.0 - omega)  # (A y)(1 - Omega)
  project = lambda x: op.inverse(known + op.forward(x) * omega)
  y = op.inverse(known)
  z = per_sample_normal(jax.random.fold_in(key, 0), indices, y.shape[1:])
  x = f(y + sigmas[0] * z, _sigma_vec(sigmas[0], y))
  x = project(jnp.clip(x, -1.0, 1.0) if clip else x)
  return _continue(f, x, key, indices, sigmas, levels, clip, project)


def add_noise(key, indices, images, sigma: float) -> jnp.ndarray:
  """images + sigma z with z per sample: a noisy observation at a known level."""
  return images + sigma * per_sample_normal(key, indices, images.shape[1:])


def denoise(f: ConsistencyFn, noisy, sigma: float, clip: bool = True) -> jnp.ndarray:
  """f(y_noisy, sigma): one evaluation removes Gaussian noise of a known level sigma."""
  x = f(noisy, _sigma_vec(sigma, noisy))
  return jnp.clip(x, -1.0, 1.0) if clip else x


# ---- interpolation ----------------------------------------------------------------------------

def slerp(a, b, alpha) -> jnp.ndarray:
  """Spherical interpolation per sample: a, b [B, ...]; alpha [B] or scalar in [0, 1]."""
  flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  cos = jnp.sum(flat_a * flat_b, -1) / (
      jnp.linalg.norm(flat_a, axis=-1) * jnp.linalg.norm(flat_b, axis=-1))
  theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))  # [B]
  alpha = jnp.broadcast_to(jnp.asarray(alpha, a.dtype), theta.shape)
  sin = jnp.sin(theta)
  parallel = sin < 1e-6  # (anti)parallel endpoints: fall back to a straight line
  safe = jnp.where(parallel, 1.0, sin)
  w_a = jnp.where(parallel, 1.0 - alpha, jnp.sin((1.0 - alpha) * theta) / safe)
  w_b = jnp.where(parallel, alpha, jnp.sin(alpha * theta) / safe)
  expand = lambda w: w.reshape(w.shape + (1,) * (a.ndim - 1))
  return expand(w_a) * a + expand(w_b) * b


def interpolate(f: ConsistencyFn, start, end, alphas, key, indices, sigmas: Sequence[float],
                levels: karras.NoiseLevels, clip: bool = True) -> jnp.ndarray:
  """x = f(slerp(start, end, alpha), sigmas[0]), then the remaining levels as in sampling.

  start, end [B, H, W, C] are points at noise level sigmas[0]: `sigma z` for two noises, or
  `x + sigma z` for two real images noised. alphas [B]. Rows with the same index share the
  later levels' noise, so a row of alphas stays a smooth path.
  """
  sigmas = [float(s) for s in sigmas]
  x = f(slerp(start, end, alphas), _sigma_vec(sigmas[0], start))
  x = jnp.clip(x, -1.0, 1.0) if clip else x
  return _continue(f, x, key, indices, sigmas, levels, clip, lambda v: v)


def interpolate_noise(f: ConsistencyFn, z1, z2, alphas, key, indices, sigmas: Sequence[float],
                      levels: karras.NoiseLevels, clip: bool = True) -> jnp.ndarray:
  """Between the samples of two noises z1, z2 [B, H, W, C]: f(T slerp(z1, z2, alpha), T)."""
  s = float(sigmas[0])
  return interpolate(f, s * z1, s * z2, alphas, key, indices, sigmas, levels, clip)


def interpolate_images(f: ConsistencyFn, x1, x2, z1, z2, alphas, key, indices,
                       sigmas: Sequence[float], levels: karras.NoiseLevels,
                       clip: bool = True) -> jnp.ndarray:
  """Between two real images through their noised versions x + sigma z at sigma = sigmas[0]."""
  s = float(sigmas[0])
  return interpolate(f, x1 + s * z1, x2 + s * z2, alphas, key, indices, sigmas, levels, clip)
