"""ECT, TrigFlow, sCT and sCD on data ~ N(0, s^2 I), against closed forms.

ECT is a consistency function in sigma (tests/helpers/gaussian.py: f = alpha(sigma) x).

TrigFlow (x_t = cos(t) x0 + sin(t) z, z ~ N(0, sd^2 I)) with s != sd: x_t ~ N(0, V(t) I),
V(t) = cos^2(t) s^2 + sin^2(t) sd^2, and
- the exact velocity E[dx_t/dt | x_t] = sin(t) cos(t) (sd^2 - s^2) / V(t) x_t (the diffusion target),
- the PF-ODE keeps x_t / sqrt(V(t)) fixed, so the consistency function is f(x_t, t) = s /
  sqrt(V(t)) x_t, i.e. F = (cos(t) - s / sqrt(V(t))) / sin(t) x_in (x_in = x_t / sd).
The families below replace s^2 by a learned v, exact at v = s^2.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import karras, sampling, trigflow
from cm_jax.methods import ect, scm
from configs import base
from tests.helpers.gaussian import (LEVELS, S, SHAPE, alpha_of, config_for, exact_alpha, train,
                                    variance_net)

# Tests marked `optimized` are execution-bound (training loops), compiled with XLA's optimisations.

SD = 0.5     # sigma_data
S_TF = 0.3   # TrigFlow data std (!= SD, else the velocity field vanishes)


def tf_variance(v, t):
  return jnp.cos(t) ** 2 * v + jnp.sin(t) ** 2 * SD**2


def cm_family():
  """F(x_in, t) = (cos t - sqrt(v / V_v(t))) / sin t x_in: the consistency function of N(0, v)."""
  def net(params, x_in, noise, labels, train_, rng):
    t = noise  # time_scale = 1
    v = jnp.exp(params["log_v"])
    gain = (jnp.cos(t) - jnp.sqrt(v / tf_variance(v, t))) / jnp.sin(t)
    return karras.per_sample(gain, x_in) * x_in
  return net


def velocity_family():
  """F = E[velocity | x_t] / sd for N(0, v) data: the exact diffusion model at v = s^2."""
  def net(params, x_in, noise, labels, train_, rng):
    t = noise
    v = jnp.exp(params["log_v"])
    gain = jnp.sin(t) * jnp.cos(t) * (SD**2 - v) / tf_variance(v, t)
    return karras.per_sample(gain, x_in) * x_in  # x_in sd gain / sd
  return net


def scm_config(method, **scm_keys):
  c = base.get_base_config()
  c.method = method
  c.scm.update(scm_keys)
  return c


def family_params(method, log_v):
  p = {"log_v": jnp.asarray(log_v, jnp.float32)}
  return {**p, **method.extra_params(jax.random.PRNGKey(1))}


def tf_batch(n, seed=0):
  return {"image": S_TF * jax.random.normal(jax.random.PRNGKey(seed), (n,) + SHAPE)}


# ---------------------------------------------------------------------------------------------
# TrigFlow parameterisation and samplers

def test_trigflow_boundary_and_one_step_is_exact():
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + SHAPE)
  anything = lambda x_t, t: jnp.tanh(x_t) + t[:, None, None, None]
  np.testing.assert_array_equal(trigflow.consistency(anything, x, 0.0, SD), x)

  exact = trigflow.bind(lambda x_in, noise: cm_family()({"log_v": np.log(S_TF**2)}, x_in, noise,
                                                        None, False, None), SD, 1.0)
  key, idx = jax.random.PRNGKey(3), jnp.arange(5)
  z = sampling.per_sample_normal(jax.random.fold_in(key, 0), idx, SHAPE)
  one = trigflow.multistep_sample(exact, key, idx, SHAPE, [trigflow.HALF_PI], SD, clip=False)
  assert one.shape == (5,) + SHAPE
  np.testing.assert_allclose(one, S_TF * z, rtol=1e-5, atol=1e-6)  # f(sd z, pi/2) = s z
  t = 1.1
  two = trigflow.multistep_sample(exact, key, idx, SHAPE, [trigflow.HALF_PI, t], SD, clip=False)
  z2 = sampling.per_sample_normal(jax.random.fold_in(key, 1), idx, SHAPE)
  x_t = math.cos(t) * S_TF * z + math.sin(t) * SD * z2
  np.testing.assert_allclose(two, S_TF / np.sqrt(tf_variance(S_TF**2, t)) * x_t, rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("solver", ["heun", "euler"])
def test_trigflow_ode_sampler_with_the_exact_velocity(solver):
  """The exact TrigFlow velocity, sampled by the TrigFlow ODE sampler, gives the EDM sampler's
  samples with the exact EDM denoiser of the same data (the same ODE in sigma = sd tan t), and
  tends to the exact map sd z -> s z as the grid refines (Heun second order, Euler first)."""
  exact = trigflow.bind(lambda x_in, noise: velocity_family()({"log_v": np.log(S_TF**2)}, x_in,
                                                              noise, None, False, None), SD, 1.0)
  edm_exact = lambda x, sigma: x * S_TF**2 / (S_TF**2 + karras.per_sample(sigma, x) ** 2)
  key, idx = jax.random.PRNGKey(0), jnp.arange(4)
  z = sampling.per_sample_normal(jax.random.fold_in(key, 0), idx, SHAPE)
  errors = []
  for n in (18, 80):
    sigmas = sampling.EDMPlan(n, solver).sigmas(LEVELS)
    x = trigflow.ode_sample(exact, key, idx, SHAPE, sigmas, solver, SD, clip=False)
    assert x.shape == (4,) + SHAPE
    ref = sampling.edm_sample(edm_exact, key, idx, SHAPE, sigmas, solver, clip=False)
    np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-6)
    errors.append(float(jnp.max(jnp.abs(x / (S_TF * z) - 1))))
  assert errors[1] < errors[0] / (8 if solver == "heun" else 3), errors
  assert errors[1] < (5e-3 if solver == "heun" else 0.1), errors


# ---------------------------------------------------------------------------------------------
# sCT / sCD

def test_scd_tangent_vanishes_at_the_exact_consistency_function():
  """With the exact teacher and the exact F, cos(t) df/dt = 0: g = 0 (r = 1), sample by sample;
  a wrong F leaves it far from 0."""
  method = scm.create_scd(scm_config("scd", warmup_steps=0), cm_family(), SHAPE)
  teacher = {"log_v": jnp.log(S_TF**2)}
  x = tf_batch(64)["image"]
  t, z, x_t = method.draw(jax.random.PRNGKey(1), x)
  teacher_method = dataclasses.replace(method, net=velocity_family())
  dxdt = teacher_method.dxt_dt(x, z, t, x_t, None, teacher)
  scale = float(jnp.max(jnp.abs(x_t)))
  for log_v, small in ((np.log(S_TF**2), True), (np.log(2 * S_TF**2), False)):
    _, g = method.tangent({"log_v": jnp.float32(log_v)}, x_t, t, dxdt, None, None, step=10)
    err = float(jnp.max(jnp.abs(g))) / scale
    assert (err < 1e-5) if small else (err > 1e-2), (log_v, err)


@pytest.mark.slow
def test_jvp_tangent_matches_finite_differences_through_the_unet():
  """cos(t) sin(t) dF/dt from jax.jvp (through a one-level digits UNet whose middle block has
  self-attention) against a central difference along the same direction
  (x_t, t) + h cos(t) sin(t) (dx_t/dt, 1)."""
  from cm_jax import models
  from tests.helpers.params import attention_unet
  config, module, params = attention_unet("sct")
  m = scm.create_sct(config, models.make_net(module), SHAPE)

  @jax.jit
  def run(params):
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
    t, z, x_t = m.draw(jax.random.PRNGKey(2), x)
    dxdt = m.dxt_dt(x, z, t, x_t, None, None)
    cs = jnp.cos(t) * jnp.sin(t)
    fn = lambda xx, tt: m.velocity(params, xx, tt, None, False, None)
    _, jvp = jax.jvp(fn, (x_t, t), (karras.per_sample(cs, x_t) * dxdt, cs))
    h = 1e-2
    step = karras.per_sample(cs, x_t) * dxdt
    fd = (fn(x_t + h * step, t + h * cs) - fn(x_t - h * step, t - h * cs)) / (2 * h)
    return jvp, fd

  jvp, fd = run(params)
  assert float(jnp.max(jnp.abs(jvp))) > 1e-3
  np.testing.assert_allclose(jvp, fd, atol=2e-3 * float(jnp.max(jnp.abs(jvp))) + 1e-5)


def test_tangent_is_the_formula_with_the_jvp_and_the_warmup():
  """g = -cos^2 (sd F^- - dx/dt) - r (cos sin x_t + sd cos sin dF/dt), r = min(1, step/warmup),
  checked on the closed-form family with an independent jvp."""
  method = scm.create_sct(scm_config("sct", warmup_steps=100), cm_family(), SHAPE)
  params = {"log_v": jnp.float32(np.log(2 * S_TF**2))}
  x = tf_batch(16)["image"]
  t, z, x_t = method.draw(jax.random.PRNGKey(3), x)
  dxdt = method.dxt_dt(x, z, t, x_t, None, None)
  cs = jnp.cos(t) * jnp.sin(t)
  fn = lambda xx, tt: method.velocity(params, xx, tt, None, True, None)
  f_minus, jvp = jax.jvp(fn, (x_t, t), (karras.per_sample(cs, x_t) * dxdt, cs))
  for step, r in ((25, 0.25), (400, 1.0)):
    _, g = method.tangent(params, x_t, t, dxdt, None, None, step=step)
    g_ref = (-karras.per_sample(jnp.cos(t) ** 2, x_t) * (SD * f_minus - dxdt)
             - r * (karras.per_sample(cs, x_t) * x_t + SD * jvp))
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
  g_n = method.normalise(g)
  norms = jnp.sqrt(jnp.sum(jnp.square(g.reshape(16, -1)), axis=1))
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(jnp.square(g_n.reshape(16, -1)), axis=1)),
                             norms / (norms + 0.1), rtol=1e-5)


def test_prior_weighting_divides_each_squared_error_by_sigma_d_tan_t():
  config = scm_config("sct", warmup_steps=100, adaptive_weight=False)
  plain = scm.create_sct(config, cm_family(), SHAPE)
  config.scm.prior_weighting = True
  prior = scm.create_sct(config, cm_family(), SHAPE)
  params = {"log_v": jnp.float32(np.log(1.3 * S_TF**2))}  # off the exact point: errors > 0
  batch, key = tf_batch(16), jax.random.PRNGKey(5)
  (loss_plain, aux), (loss_prior, aux_prior) = (m.loss(params, None, batch, key, 50)
                                                for m in (plain, prior))
  assert float(aux["mse"]) == pytest.approx(float(aux_prior["mse"]))  # logged unweighted
  # The per-sample errors behind the plain mean, recomputed as the loss draws them.
  t, z, x_t = plain.draw(jax.random.split(key)[0], batch["image"])
  f_minus, g = plain.tangent(params, x_t, t, plain.dxt_dt(batch["image"], z, t, x_t, None, None),
                             None, None, 50)
  target = f_minus + plain.normalise(g)
  mse = jnp.mean(jnp.square((plain.velocity(params, x_t, t, None, True, None) - target)
                            .reshape(16, -1)), axis=1)
  np.testing.assert_allclose(loss_plain, jnp.mean(mse), rtol=1e-5)
  np.testing.assert_allclose(loss_prior, jnp.mean(mse / (SD * jnp.tan(t))), rtol=1e-5)


@pytest.mark.optimized
@pytest.mark.parametrize("name", ["trigflow", "sct", "scd"])
def test_trigflow_methods_converge_to_the_exact_functions(name):
  """Training the one-parameter families (with the adaptive weighting head) finds v = s^2; the
  normalised sCT tangent keeps the exact point a fixed point (its noise is symmetric)."""
  config = scm_config(name, warmup_steps=100)
  create = {"trigflow": scm.create_trigflow, "sct": scm.create_sct, "scd": scm.create_scd}[name]
  net = velocity_family() if name == "trigflow" else cm_family()
  method = create(config, net, SHAPE)
  params = family_params(method, 0.0)  # v = 1 at the start
  frozen = {"log_v": jnp.log(S_TF**2)} if name == "scd" else None
  if name == "scd":
    method = _with_teacher(method, dataclasses.replace(method, net=velocity_family()))
  params = _train_tf(method, params, steps=600, lr=0.05, frozen=frozen)
  assert float(jnp.exp(params["log_v"])) == pytest.approx(S_TF**2, rel=0.03)


def _with_teacher(method, teacher):
  """sCD whose teacher network differs from the student's (velocity vs consistency family)."""
  @dataclasses.dataclass(frozen=True)
  class WithTeacher(scm.ContinuousConsistency):
    teacher: scm.ContinuousConsistency = None

    def dxt_dt(self, x, z, t, x_t, labels, frozen):
      return self.teacher.dxt_dt(x, z, t, x_t, labels, frozen)
  fields = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
  return WithTeacher(**fields, teacher=teacher)


def _train_tf(method, params, steps, lr, frozen=None, batch=512, head_only=False):
  import optax
  tx = optax.adam(optax.exponential_decay(lr, steps, 0.01))

  def step(carry, k):
    params, opt_state = carry
    data_key, key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), k))
    x = S_TF * jax.random.normal(data_key, (batch,) + SHAPE)
    grads = jax.grad(lambda p: method.loss(p, None, {"image": x}, key, k, frozen)[0])(params)
    if head_only:  # the model stays where it is
      grads = {**grads, "log_v": jnp.zeros_like(grads["log_v"])}
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
  return params


@pytest.mark.optimized
@pytest.mark.slow
def test_adaptive_weight_head_is_trained_and_learns_the_loss_scale():
  """The head gets gradients, and trained alone against a fixed (wrong) model, exp(-w(t)) becomes
  the expected unweighted loss at t (the minimiser of exp(w) L - w)."""
  method = scm.create_trigflow(scm_config("trigflow"), velocity_family(), SHAPE)
  params = family_params(method, np.log(4 * S_TF**2))  # a wrong model: loss > 0 at every t
  grads = jax.grad(lambda p: method.loss(p, None, tf_batch(256), jax.random.PRNGKey(0), 0)[0])(
      params)
  assert float(jnp.max(jnp.abs(grads[scm.HEAD]["dense2"]["kernel"]))) > 0
  trained = _train_tf(method, params, steps=800, lr=0.01, head_only=True)
  assert float(trained["log_v"]) == float(params["log_v"])
  t = jnp.asarray([0.3, 0.8, 1.2])
  x = tf_batch(4096, seed=5)["image"]
  for ti in t:
    tt = jnp.full((x.shape[0],), ti)
    z = SD * jax.random.normal(jax.random.PRNGKey(6), x.shape)
    x_t = jnp.cos(ti) * x + jnp.sin(ti) * z
    target = (jnp.cos(ti) * z - jnp.sin(ti) * x) / SD
    mse = jnp.mean(jnp.square(method.velocity(params, x_t, tt, None, False, None) - target))
    w = method.head(trained[scm.HEAD], ti[None])[0]
    assert float(jnp.exp(-w)) == pytest.approx(float(mse), rel=0.15), float(ti)


# ---------------------------------------------------------------------------------------------
# ECT

def test_ect_r_schedule():
  t = jnp.asarray([1e-3, 0.1, 1.0, 10.0, 80.0])
  r0, r3 = ect.ect_r(t, 0, 2.0, 8.0, 1.0), ect.ect_r(t, 3, 2.0, 8.0, 1.0)
  assert np.all(r0 >= 0) and np.all(r0 < t) and np.all(r3 < t)
  assert float(r0[0]) == 0.0 and float(r0[1]) == 0.0  # stage 0, small t: the target is x
  gap = lambda a: 1 - ect.ect_r(jnp.float32(80.0), a, 2.0, 8.0, 1.0) / 80.0
  for a in range(4):  # the gap t - r halves with each stage (q = 2)
    assert float(gap(a + 1)) == pytest.approx(float(gap(a)) / 2, rel=1e-4)
  assert int(ect.ect_stage(250, 100)) == 2


def test_ect_target_is_the_data_where_r_is_zero():
  """r = 0: the loss is w(t) pseudo_huber(f(x_t, t), x) with w = 1 / t."""
  config = config_for("ect", 1000)
  config.ect.update(dict(stage_steps=100, huber_c=-1.0))
  net, params = variance_net()
  method = ect.create(config, net, SHAPE)
  t_val = 0.7
  method = dataclasses.replace(method, pairs=dataclasses.replace(
      method.pairs, sampler=lambda rng, step, b: (jnp.zeros((b,)), jnp.full((b,), t_val))))
  x = S * jax.random.normal(jax.random.PRNGKey(0), (8,) + SHAPE)
  key = jax.random.PRNGKey(1)
  loss, _ = method.loss(params, None, {"image": x}, key, 0)
  z = jax.random.normal(jax.random.split(key, 3)[1], x.shape)
  online = method.consistency(params, x + t_val * z, jnp.full((8,), t_val), None, True, None)
  expected = jnp.mean(method.distance(online, x) / t_val)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


@pytest.mark.optimized
def test_ect_converges_to_the_exact_consistency_function():
  """ECT's stages shrink t - r towards 0, where its fixed point is the exact f: the variance
  family ends within 3% of s^2 and alpha within 2% on a 40-level grid."""
  steps = 1500
  config = config_for("ect", steps)
  config.ect.update(dict(stage_steps=100, huber_c=-1.0))
  net, params = variance_net()
  params = train(ect.create(config, net, SHAPE), params, steps=steps, lr=0.05)
  assert np.exp(float(params["log_v"])) == pytest.approx(S**2, rel=0.03)
  sig = karras.karras_sigmas(40, LEVELS)
  np.testing.assert_allclose(alpha_of(params, net, sig), exact_alpha(sig), rtol=0.02)


# ---------------------------------------------------------------------------------------------
# Configs and clear errors

def test_teachers_are_checked_before_anything_runs():
  from cm_jax.train import teacher as teacher_lib
  from configs import digits
  for method, kind in (("ect", "an EDM"), ("scd", "a TrigFlow")):
    with pytest.raises(ValueError, match=f"method={method} needs {kind} teacher"):
      teacher_lib.check(digits.get_config(f"method={method}"))
  edm = digits.get_config("method=edm")
  with pytest.raises(ValueError, match="starts from a method=trigflow run"):
    teacher_lib.check_compatible(digits.get_config("method=scd"), edm, "W")
  teacher_lib.check_compatible(digits.get_config("method=ect"), edm, "W")  # dropout may differ
  scd = digits.get_config("method=scd")
  scd.scm.time_scale = 1000.0
  with pytest.raises(ValueError, match="scm.time_scale"):
    teacher_lib.check_compatible(scd, digits.get_config("method=trigflow"), "W")


def test_digits_configs_of_the_new_methods():
  from cm_jax import methods
  from configs import digits
  for name in ("ect", "trigflow", "sct", "scd"):  # the digits recipe: one network and batch
    c = digits.get_config(f"method={name}")
    assert c.model == digits.get_config("method=ict").model and c.train.batch_size == 64
    assert (name in methods.TRIGFLOW) == (name != "ect")
  assert digits.get_config("method=ect").ect.stage_steps == 200  # 10 stages of the 2000 steps
  assert methods.TEACHERS == {"cd": "edm", "ect": "edm", "scd": "trigflow"}
