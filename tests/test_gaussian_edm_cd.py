"""EDM, its ODE samplers and CD on data ~ N(0, s^2 I), against closed forms (helpers/gaussian.py).

The exact denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2) and the PF-ODE moves x along
x_sigma' = x_sigma sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2).

CD with an exact teacher on a fixed grid of N levels has an exact discrete fixed point: the
teacher's step is linear, x_lo = beta_n x_hi, so f(x_hi, s_{n+1}) = f(x_lo, s_n) gives
alpha_{n+1} = alpha_n beta_n, alpha_1 = 1. beta_n is one Heun step, so that chain differs from the
exact consistency function by the Heun solver's global error, O(1/N^2): at most 5.6% on the
CIFAR-10 grid (N = 18), 1.0% at N = 40 (ImageNet 64). That is the discrete-grid tolerance below.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import karras, ode, sampling
from cm_jax.methods import cd, edm
from configs import base
from tests.helpers.gaussian import (LEVELS, S, SHAPE, alpha_of, config_for, exact_alpha,
                                    exact_denoiser, table_net, train, variance_denoiser_net)

# Execution-bound (training loops run many steps): compiled with XLA's optimisations.
pytestmark = pytest.mark.optimized

# float64 for the order-of-accuracy checks: jax.enable_x64 in newer jax, jax.experimental's in 0.7.
if hasattr(jax, "enable_x64"):
  enable_x64 = jax.enable_x64
else:
  from jax.experimental import enable_x64


def exact_flow(x, sigma, sigma_next):
  return x * np.sqrt(S**2 + sigma_next**2) / np.sqrt(S**2 + sigma**2)


def one_step_error(solver, sigma, sigma_next):
  with enable_x64(True):
    x = jnp.ones((1,) + SHAPE, jnp.float64)
    got = ode.get_step(solver)(exact_denoiser, x, jnp.float64(sigma), jnp.float64(sigma_next))
    return abs(float(got[0, 0, 0, 0]) - exact_flow(1.0, sigma, sigma_next))


@pytest.mark.parametrize("solver,local_order", [("heun", 3), ("euler", 2)])
def test_one_ode_step_has_its_order_of_accuracy(solver, local_order):
  """One step of size h from sigma = 1: local error O(h^3) for Heun (second order), O(h^2) for
  Euler (first order), so halving h divides it by ~8 and ~4."""
  errors = [one_step_error(solver, 1.0, 1.0 - h) for h in (0.2, 0.1, 0.05, 0.025)]
  ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
  np.testing.assert_allclose(ratios, 2.0**local_order, rtol=0.2)
  assert errors[-1] < (1e-5 if solver == "heun" else 1e-4)


def cd_chain(n_levels, solver):
  """alpha on the ascending grid at CD's fixed point with the exact teacher (numpy float64)."""
  sig = karras.karras_sigmas(n_levels, LEVELS)
  with enable_x64(True):
    x = jnp.ones((n_levels - 1, 1, 1, 1), jnp.float64)
    beta = ode.get_step(solver)(exact_denoiser, x, jnp.asarray(sig[1:]), jnp.asarray(sig[:-1]))
  return np.concatenate([[1.0], np.cumprod(np.asarray(beta).reshape(-1))])


def chain_error(n_levels, solver):
  return np.max(np.abs(cd_chain(n_levels, solver) / exact_alpha(karras.karras_sigmas(
      n_levels, LEVELS)) - 1))


def test_cd_chain_tends_to_exact_consistency_function_at_solver_order():
  """Global error over the grid: Heun O(1/N^2) (5.6% at 18 levels, 1% at 40), Euler O(1/N)."""
  assert chain_error(18, "heun") < 0.06 and chain_error(40, "heun") < 0.011
  heun = [chain_error(n, "heun") for n in (17, 33, 65)]
  euler = [chain_error(n, "euler") for n in (17, 33, 65)]
  np.testing.assert_allclose(np.asarray(heun[:-1]) / heun[1:], 4.0, rtol=0.15)
  np.testing.assert_allclose(np.asarray(euler[:-1]) / euler[1:], 2.0, rtol=0.15)


def test_heun_sampler_on_exact_denoiser():
  """18 levels, 35 evaluations: x0 / x_T is the product of the Heun steps down the grid (the CD
  chain's), then D(x, eps); within the 5.6% grid tolerance of the exact s / sqrt(s^2 + T^2),
  Euler ~3 times further off. Sample i does not depend on which batch draws it."""
  key, idx = jax.random.PRNGKey(0), jnp.arange(6)
  calls = []
  def denoise(x, sigma):
    calls.append(1)  # counts traced calls: scan traces its body once
    return exact_denoiser(x, sigma)
  plan = sampling.EDMPlan(18, "heun")
  assert plan.nfe == 35 and sampling.EDMPlan(18, "euler").nfe == 18
  z = sampling.per_sample_normal(jax.random.fold_in(key, 0), idx, SHAPE)
  ratio = lambda solver, f=exact_denoiser: np.asarray(sampling.edm_sample(
      f, key, idx, SHAPE, plan.sigmas(LEVELS), solver, clip=False) / (LEVELS.sigma_max * z))
  heun = ratio("heun", denoise)
  assert len(calls) == 3  # two Heun stages in the scan body + the final Euler step to 0
  eps = LEVELS.sigma_min
  np.testing.assert_allclose(heun, cd_chain(18, "heun")[-1] * S**2 / (S**2 + eps**2), rtol=1e-4)
  exact = S / np.sqrt(S**2 + LEVELS.sigma_max**2)
  heun_err = np.max(np.abs(heun / exact - 1))
  euler_err = np.max(np.abs(ratio("euler") / exact - 1))
  assert heun_err < 0.06 and euler_err > 2.5 * heun_err, (heun_err, euler_err)
  part = sampling.edm_sample(exact_denoiser, key, idx[2:4], SHAPE, plan.sigmas(LEVELS), "heun",
                             clip=False)
  np.testing.assert_allclose(np.asarray(part / (LEVELS.sigma_max * z[2:4])), heun[2:4], rtol=1e-6)


def test_edm_training_converges_to_exact_denoiser():
  """The one-parameter family D = v / (v + sigma^2) x holds the exact denoiser at v = s^2;
  EDM's loss finds it (measured: v = 0.25002)."""
  net, params = variance_denoiser_net()
  config = base.get_base_config()
  method = edm.create(config, net, SHAPE)
  params = train(method, params, steps=1000, lr=0.05)
  assert np.exp(float(params["log_v"])) == pytest.approx(S**2, rel=2e-3)


def exact_teacher_cd(n_levels, solver, target_decay):
  """CD whose teacher is the exact denoiser: the variance family's net with v = s^2 as `frozen`."""
  config = config_for("cd", 10**6, distance="l2")
  config.distill.update(dict(num_levels=n_levels, solver=solver, target_decay=target_decay))
  net, params = table_net(n_levels)
  method = cd.create(config, net, SHAPE)
  teacher_net, _ = variance_denoiser_net()
  method = dataclasses.replace(method, teacher_step=cd.teacher_step(teacher_net, LEVELS, solver))
  frozen = {"log_v": jnp.asarray(np.log(S**2), jnp.float32)}
  return method, net, params, frozen


@pytest.mark.parametrize("solver,target_decay", [("heun", 0.0), ("euler", 0.95)])
def test_cd_from_exact_teacher_reaches_its_fixed_point(solver, target_decay):
  """Per-level family, N = 18: every level within 1e-4 of the discrete CD chain (measured: 6e-7
  Heun with mu = 0, 6e-6 Euler with mu = 0.95), hence (Heun) within the 5.6% grid tolerance of
  the exact consistency function."""
  n = 18
  method, net, params, frozen = exact_teacher_cd(n, solver, target_decay)
  assert method.uses_teacher and method.has_target_network == (target_decay > 0)
  params = train(method, params, steps=1500, lr=0.05, frozen=frozen)
  sig = karras.karras_sigmas(n, LEVELS)
  learned = alpha_of(params, net, sig)
  np.testing.assert_allclose(learned, cd_chain(n, solver), rtol=1e-4)
  if solver == "heun":
    np.testing.assert_allclose(learned, exact_alpha(sig), rtol=0.06)


def test_cd_needs_the_teacher():
  method, _, params, _ = exact_teacher_cd(18, "heun", 0.0)
  x = jnp.zeros((2,) + SHAPE)
  with pytest.raises(ValueError, match="teacher"):
    method.loss(params, None, {"image": x}, jax.random.PRNGKey(0), 0)
