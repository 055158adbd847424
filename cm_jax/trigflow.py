"""TrigFlow (sCM, docs/maths.md §7): the parameterisation and its samplers, as pure functions.

x_t = cos(t) x0 + sin(t) z, z ~ N(0, sd^2 I), t in [0, pi/2] (x_{pi/2} = sd z is pure noise). The
network F predicts the scaled velocity: sd F(x_t / sd, c_noise(t)) ~ dx_t/dt = cos(t) z - sin(t) x0,
c_noise(t) = time_scale * t. From (x_t, velocity v) the clean sample is x0 = cos(t) x_t - sin(t) v
and the noise z = sin(t) x_t + cos(t) v, hence

- the consistency function (sCT / sCD) and the diffusion model's x0-prediction (trigflow) are the
  same formula: f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, t), with f(x, 0) = x exactly;
- the probability-flow ODE dx_t/dt = sd F is EDM's in sigma = sd tan(t), x_sigma = x_t / cos(t),
  with the denoiser D(x, sigma) = f(cos(t) x, t): the diffusion model is sampled by the EDM
  solvers (ode.py), whose Euler step is then TrigFlow's DDIM step.

`velocity(x_t [B, H, W, C], t [B]) -> F` is the raw network with parameters, labels, eval mode,
sigma_data and the time scaling bound (see `bind`). Noise is drawn per sample from
`fold_in(key, index)` exactly as in sampling.py, so sample i depends on (seed, i) alone.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras, ode, sampling

HALF_PI = math.pi / 2
VelocityFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def bind(net: Callable, sigma_data: float, time_scale: float) -> VelocityFn:
  """net(x_in, c_noise) -> F becomes (x_t, t) -> F(x_t / sd, time_scale t)."""
  return lambda x_t, t: net(x_t / sigma_data, time_scale * t)


def time_from_tau(tau, sigma_data: float):
  """t = arctan(exp(tau) / sd): tau is the log of EDM's sigma."""
  return jnp.arctan(jnp.exp(tau) / sigma_data)


def consistency(velocity: VelocityFn, x_t, t, sigma_data: float):
  """f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, t); t: [B] or scalar."""
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
  f = velocity(x_t, t).astype(x_t.dtype)
  return (karras.per_sample(jnp.cos(t), x_t) * x_t
          - karras.per_sample(jnp.sin(t), x_t) * sigma_data * f)


def sigma_denoiser(velocity: VelocityFn, sigma_data: float) -> ode.DenoiserFn:
  """The same model as EDM's denoiser D(x, sigma) in sigma space: x_sigma = x_t / cos(t),
  sigma = sd tan(t), so D(x, sigma) = f(cos(t) x, t) with t = arctan(sigma / sd)."""
  def denoise(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    t = jnp.arctan(sigma / sigma_data)
    cos_t = sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    return consistency(velocity, karras.per_sample(cos_t, x) * x, t, sigma_data)
  return denoise


def ode_sample(velocity: VelocityFn, key, indices, sample_shape, sigmas, solver: str,
               sigma_data: float, clip: bool = True) -> jnp.ndarray:
  """The TrigFlow model's PF-ODE, solved exactly as the EDM sampler solves EDM's: the TrigFlow
  ODE in t is EDM's ODE in sigma = sd tan(t) (x_sigma = x_t / cos(t)), so `sampling.edm_sample`
  runs on `sigma_denoiser` over the same decreasing `sigmas` (sigma_max = 80 is t = arctan(160),
  0.006 short of pi/2; Euler there is the DDIM step x_s = cos(t - s) x_t - sin(t - s) sd F).
  Same first noise, NFE and final step to t = 0 as the EDM sampler."""
  return sampling.edm_sample(sigma_denoiser(velocity, sigma_data), key, indices, sample_shape,
                             sigmas, solver, clip=clip)


def check_times(times: Sequence[float]) -> np.ndarray:
  """Consistency sampling times must decrease strictly and lie in (0, pi/2]."""
  return sampling.check_times(times, HALF_PI, "(0, pi/2]", "TrigFlow")


def multistep_sample(velocity: VelocityFn, key, indices, sample_shape, times, sigma_data: float,
                    clip: bool = True) -> jnp.ndarray:
  """sCM's 1- and few-step sampler: x = f(sd z, times[0]) (times[0] = pi/2: pure noise); then for
  each t in times[1:]: x = f(cos(t) x + sin(t) sd z', t). Clipped to [-1, 1] after every f."""
  x = None
  for step, t in enumerate(float(t) for t in times):
    z = sigma_data * sampling.per_sample_normal(jax.random.fold_in(key, step), indices,
                                                sample_shape)
    x_t = z if x is None else math.cos(t) * x + math.sin(t) * z
    x = consistency(velocity, x_t, jnp.full((x_t.shape[0],), t, jnp.float32), sigma_data)
    if clip:
      x = jnp.clip(x, -1.0, 1.0)
  return x
