"""Noise levels, the consistency-function and EDM-denoiser parameterisations (docs/maths.md §1).

Everything here is a pure function of arrays or Python numbers. Sigma grids are ascending
(index 1 = sigma_min) unless a name says `descending`; the released samplers index descending.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from cm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class NoiseLevels:
  sigma_min: float = 0.002   # eps: where the boundary condition f(x, eps) = x holds
  sigma_max: float = 80.0    # T
  sigma_data: float = 0.5
  rho: float = 7.0

  @classmethod
  def from_config(cls, karras_config) -> "NoiseLevels":
    return cls(sigma_min=float(karras_config.sigma_min), sigma_max=float(karras_config.sigma_max),
               sigma_data=float(karras_config.sigma_data), rho=float(karras_config.rho))


def sigma_at(i, n, levels: NoiseLevels, xp=jnp):
  """Level i (1-based, ascending) of the Karras grid of n levels; i and n may be traced arrays."""
  lo = levels.sigma_min ** (1.0 / levels.rho)
  hi = levels.sigma_max ** (1.0 / levels.rho)
  frac = (xp.asarray(i) - 1) / (xp.asarray(n) - 1)
  return (lo + frac * (hi - lo)) ** levels.rho


def karras_sigmas(n: int, levels: NoiseLevels) -> np.ndarray:
  """The ascending grid sigma_1 < ... < sigma_n as float64 numpy."""
  if n < 2:
    raise UserError(f"A Karras grid needs at least 2 levels, got {n}.")
  return np.asarray(sigma_at(np.arange(1, n + 1), n, levels, xp=np), np.float64)


def ts_to_sigmas(ts, steps: int, levels: NoiseLevels) -> np.ndarray:
  """Released sampler convention: indices into a descending grid of `steps` levels (0 = T)."""
  ts = np.asarray(ts)
  if steps < 2:
    raise UserError(f"steps must be >= 2, got {steps}.")
  if ts.size == 0 or ts.min() < 0 or ts.max() > steps - 1:
    raise UserError(f"ts indices must lie in [0, {steps - 1}], got {ts.tolist()}.")
  return karras_sigmas(steps, levels)[::-1][ts]


def consistency_scalings(sigma, levels: NoiseLevels):
  """(c_skip, c_out) with c_skip(eps) = 1 and c_out(eps) = 0 exactly."""
  sd = levels.sigma_data
  shifted = sigma - levels.sigma_min
  c_skip = sd**2 / (shifted**2 + sd**2)
  c_out = sd * shifted / jnp.sqrt(sd**2 + sigma**2)
  return c_skip, c_out


def denoiser_scalings(sigma, levels: NoiseLevels):
  """EDM's c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2): unit-variance targets."""
  sd = levels.sigma_data
  return sd**2 / (sigma**2 + sd**2), sigma * sd / jnp.sqrt(sigma**2 + sd**2)


def c_in(sigma, levels: NoiseLevels):
  return 1.0 / jnp.sqrt(sigma**2 + levels.sigma_data**2)


def c_noise(sigma):
  """Network time input of the NCSN++ release: 0.25 ln(sigma)."""
  return 0.25 * jnp.log(sigma)


def per_sample(v, x):
  """Broadcasts a per-sample [B] (or scalar) coefficient against x [B, ...]."""
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _preconditioned(net: Callable, x, sigma, levels: NoiseLevels, scalings: Callable):
  """c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)) for (c_skip, c_out) = scalings(s, levels)."""
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
  c_skip, c_out = scalings(sigma, levels)
  out = net(per_sample(c_in(sigma, levels), x) * x, c_noise(sigma))
  return per_sample(c_skip, x) * x + per_sample(c_out, x) * out.astype(x.dtype)


def consistency_function(net: Callable, x, sigma, levels: NoiseLevels):
  """f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)).

  `net(x_in, c_noise) -> F` is the raw network with labels/dropout already bound. sigma: [B] or
  scalar. Returns an array like x; f(x, sigma_min) == x bit for bit.
  """
  return _preconditioned(net, x, sigma, levels, consistency_scalings)


def denoiser(net: Callable, x, sigma, levels: NoiseLevels):
  """The EDM denoiser D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)), EDM scalings.

  Same network interface and broadcasting as `consistency_function`; no boundary condition
  (D(x, s) -> x only as s -> 0). sigma: [B] or scalar, > 0.
  """
  return _preconditioned(net, x, sigma, levels, denoiser_scalings)
