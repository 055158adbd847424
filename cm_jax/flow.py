"""The linear flow path of MeanFlow (Geng et al. 2025; docs/meanflow.md) and its samplers.

z_t = (1 - t) x + t e, e ~ N(0, I), t in [0, 1] (z_1 = e is pure noise), instantaneous velocity
v = dz_t/dt = e - x. The network models the average velocity over [r, t],
u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds, so one evaluation moves along the trajectory:
z_r = z_t - (t - r) u(z_t, r, t). Hence

- the consistency function of this ODE is f(z_t, t) = z_t - t u(z_t, 0, t) (f(x, 0) = x), and
  1-step sampling is x = e - u(e, 0, 1);
- in EDM's noise levels sigma = t / (1 - t) (x_sigma = z_t / (1 - t) = x + sigma e) the same map
  is a sigma-time consistency function, so editing and denoising run on it unchanged.

`AverageVelocityFn(z [B, H, W, C], r [B], t [B]) -> u` is the network with parameters, labels and
eval mode bound (`bind`). Noise is drawn per sample from `fold_in(key, index)` as in sampling.py.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras, sampling

AverageVelocityFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]


def bind(net: Callable, time_scale: float) -> AverageVelocityFn:
  """net(z, c_noise [B, 2]) -> u becomes (z, r, t) -> u with c_noise = time_scale (t, t - r)."""
  return lambda z, r, t: net(z, time_scale * jnp.stack([t, t - r], axis=-1))


def path(x, e, t):
  """z_t = (1 - t) x + t e; t [B]."""
  return karras.per_sample(1.0 - t, x) * x + karras.per_sample(t, x) * e


def consistency(u: AverageVelocityFn, z, t):
  """f(z_t, t) = z_t - t u(z_t, 0, t): the start of the trajectory through z_t; t [B] or scalar."""
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), z.shape[:1])
  return z - karras.per_sample(t, z) * u(z, jnp.zeros_like(t), t).astype(z.dtype)


def sigma_consistency(u: AverageVelocityFn) -> sampling.ConsistencyFn:
  """The same map in EDM's levels: f(x, sigma) = f_flow(x / (1 + sigma), sigma / (1 + sigma))."""
  def f(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    return consistency(u, karras.per_sample(1.0 / (1.0 + sigma), x) * x, sigma / (1.0 + sigma))
  return f


def check_times(times: Sequence[float]) -> np.ndarray:
  """Sampling times must decrease strictly and lie in (0, 1]; the trajectory ends at t = 0."""
  return sampling.check_times(times, 1.0, "(0, 1]", "MeanFlow")


def uniform_times(steps: int) -> list[float]:
  """k steps of equal length: 1, (k - 1) / k, ..., 1 / k."""
  return [float(1.0 - i / steps) for i in range(steps)]


def multistep_sample(u: AverageVelocityFn, key, indices, sample_shape, times,
                     clip: bool = True) -> jnp.ndarray:
  """MeanFlow's deterministic few-step sampler: z = e; for each t_i of `times` (1 first) jump to
  the next time (0 after the last): z <- z - (t_i - t_{i+1}) u(z, t_{i+1}, t_i). One time is
  1-step sampling. The intermediate z are noisy states, so only the result is clipped."""
  times = [float(t) for t in times]
  z = sampling.per_sample_normal(jax.random.fold_in(key, 0), indices, sample_shape)
  for t, r in zip(times, times[1:] + [0.0]):
    tt = jnp.full((z.shape[0],), t, jnp.float32)
    rr = jnp.full((z.shape[0],), r, jnp.float32)
    z = z - (t - r) * u(z, rr, tt).astype(z.dtype)
  return jnp.clip(z, -1.0, 1.0) if clip else z
