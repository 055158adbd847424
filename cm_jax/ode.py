"""The probability-flow ODE dx/ds = (x - D(x, s)) / s (docs/maths.md §1) and its Euler and Heun
steps.

Shared by the ODE samplers of the denoisers (EDM, and TrigFlow through trigflow.ode_sample) and
CD's teacher step. `denoise(x, sigma) -> x0` has its parameters, labels and eval mode bound;
sigmas are per-sample [B] or scalars, all > 0.
"""
from __future__ import annotations

from typing import Callable

from cm_jax import karras
from cm_jax.errors import UserError

DenoiserFn = Callable  # (x [B, H, W, C], sigma [B] or scalar) -> x0 [B, H, W, C]


def slope(denoise: DenoiserFn, x, sigma):
  """dx/ds at (x, sigma)."""
  return (x - denoise(x, sigma)) / karras.per_sample(sigma, x)


def euler_step(denoise: DenoiserFn, x, sigma, sigma_next):
  """First order: one denoiser evaluation."""
  return x + karras.per_sample(sigma_next - sigma, x) * slope(denoise, x, sigma)


def heun_step(denoise: DenoiserFn, x, sigma, sigma_next):
  """Second order (EDM Algorithm 1): the mean of the slopes at both ends of an Euler step; two
  evaluations. sigma_next must be > 0 (the sampler's last step to 0 is Euler)."""
  h = karras.per_sample(sigma_next - sigma, x)
  d = slope(denoise, x, sigma)
  d_next = slope(denoise, x + h * d, sigma_next)
  return x + h * 0.5 * (d + d_next)


SOLVERS = {"euler": euler_step, "heun": heun_step}
EVALS_PER_STEP = {"euler": 1, "heun": 2}


def get_step(solver: str) -> Callable:
  if solver not in SOLVERS:
    raise UserError(f"Unknown ODE solver {solver!r}; choose one of {', '.join(SOLVERS)}.")
  return SOLVERS[solver]
