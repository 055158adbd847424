"""MeanFlow on data ~ N(0, s^2 I), against closed forms, and its network, sampler and config errors.

On z_t = (1 - t) x + t e, e ~ N(0, I): z_t ~ N(0, sigma_t^2 I), sigma_t^2 = (1 - t)^2 s^2 + t^2.
The PF-ODE keeps z_t / sigma_t fixed, so z_r = (sigma_r / sigma_t) z_t and
- the average velocity is u(z, r, t) = z (1 - sigma_r / sigma_t) / (t - r),
- the instantaneous velocity (r -> t) is v(z, t) = z (t - (1 - t) s^2) / sigma_t^2,
- the 1-step map e -> e - u(e, 0, 1) = s e gives exact samples.
The family below replaces s^2 by a learned v = exp(log_v): exact at v = s^2.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import flow, karras, models, sampling
from cm_jax.errors import UserError
from cm_jax.methods import meanflow
from configs import base, digits
from tests.helpers.gaussian import S, SHAPE, train
from tests.helpers.params import attention_unet


def sigma_t(var, t):
  return jnp.sqrt((1 - t) ** 2 * var + t**2)


def gain(var, r, t):
  """u / z of N(0, var) data; the r -> t limit where t - r is tiny."""
  close = jnp.abs(t - r) < 1e-6
  safe = jnp.where(close, 1.0, t - r)
  average = (1 - sigma_t(var, r) / sigma_t(var, t)) / safe
  instant = (t - (1 - t) * var) / sigma_t(var, t) ** 2
  return jnp.where(close, instant, average)


def family_net(params, z, noise, labels, train_, rng):
  """The network of the family: noise = (t, t - r) (time_scale 1)."""
  t, r = noise[:, 0], noise[:, 0] - noise[:, 1]
  return karras.per_sample(gain(jnp.exp(params["log_v"]), r, t), z) * z


def exact_u(z, r, t):
  return family_net({"log_v": jnp.log(S**2)}, z, jnp.stack([t, t - r], -1), None, False, None)


def method(**keys):
  c = base.get_base_config()
  c.method = "meanflow"
  c.model.time_inputs = 2
  c.meanflow.update(keys)
  return meanflow.create(c, family_net, SHAPE)


def draws(n=64, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  t = jax.random.uniform(k1, (n,), minval=0.05, maxval=1.0)
  r = t * jax.random.uniform(k2, (n,))
  z = sigma_t(S**2, t)[:, None, None, None] * jax.random.normal(k3, (n,) + SHAPE)
  return z, r, t


def test_the_closed_form_is_a_flow_of_the_ode():
  """u(z, r, t) (t - r) moves z_t to z_r on the trajectory, and over a short interval u is the
  velocity at its midpoint (u -> v as r -> t)."""
  z, r, t = draws()
  z_r = z - karras.per_sample(t - r, z) * exact_u(z, r, t)
  np.testing.assert_allclose(z_r, karras.per_sample(sigma_t(S**2, r) / sigma_t(S**2, t), z) * z,
                             rtol=1e-5, atol=1e-6)
  h = 1e-3
  m = t - h / 2  # v at z_m = (sigma_m / sigma_t) z_t
  midpoint = karras.per_sample(gain(S**2, m, m) * sigma_t(S**2, m) / sigma_t(S**2, t), z) * z
  # float32: 1 - sigma_r / sigma_t loses ~1e-7 / h of the gain
  np.testing.assert_allclose(exact_u(z, t - h, t), midpoint, rtol=1e-3, atol=2e-4)


def test_the_meanflow_target_at_the_exact_average_velocity_is_itself():
  """v - (t - r)(v d_z u + d_t u) with the exact (marginal) velocity v and the exact u: u, through
  the method's own jvp; at r = t it is v (flow matching)."""
  m = method()
  z, r, t = draws()
  v = exact_u(z, t, t)
  params = {"log_v": jnp.log(jnp.float32(S**2))}
  u_tgt, u = m.target(params, z, r, t, v, None, None)
  np.testing.assert_allclose(u_tgt, exact_u(z, r, t), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(u, exact_u(z, r, t), rtol=1e-6)
  u_tgt_same, _ = m.target(params, z, t, t, v, None, None)
  np.testing.assert_allclose(u_tgt_same, v, rtol=1e-6)


@pytest.mark.parametrize("norm_p", [0.0, 0.75])
def test_training_the_family_converges_to_the_exact_average_velocity(norm_p):
  """The loss with the conditional velocity e - x (what training sees) has the exact u as its
  fixed point; from v = 1 the family reaches s^2 = 0.25 (plain l2 and the adaptive weight)."""
  m = method(p_mean=-0.4, p_std=1.0, ratio_r_neq_t=0.75, norm_p=norm_p)
  params = train(m, {"log_v": jnp.asarray(0.0, jnp.float32)}, steps=400, lr=0.05)
  np.testing.assert_allclose(float(jnp.exp(params["log_v"])), S**2, rtol=0.03)


def test_the_samplers_of_the_exact_model_give_exact_samples():
  """1 step: e - u(e, 0, 1) = s e; 2 steps through 0.5 compose to the same; and the flow's
  consistency function in EDM's sigma is N(0, s^2)'s: f(x_sigma, sigma) = s / sqrt(s^2 + sigma^2)
  x_sigma."""
  key, idx = jax.random.PRNGKey(3), jnp.arange(6)
  e = sampling.per_sample_normal(jax.random.fold_in(key, 0), idx, SHAPE)
  for times in ([1.0], [1.0, 0.5], flow.uniform_times(4)):
    x = flow.multistep_sample(exact_u, key, idx, SHAPE, times, clip=False)
    np.testing.assert_allclose(x, S * e, rtol=1e-5, atol=1e-6)
  f = flow.sigma_consistency(exact_u)
  sigma = jnp.asarray([0.1, 1.0, 5.0, 80.0, 0.5, 2.0])
  np.testing.assert_allclose(f(e, sigma), karras.per_sample(S / jnp.sqrt(S**2 + sigma**2), e) * e,
                             rtol=1e-4, atol=1e-6)


def test_times_are_two_ordered_logit_normals_with_the_fraction_r_neq_t():
  m = method(p_mean=-2.0, p_std=2.0, ratio_r_neq_t=0.75)
  r, t = m.draw_times(jax.random.PRNGKey(0), 20000)
  assert bool(jnp.all((0 <= r) & (r <= t) & (t <= 1)))
  assert abs(float(jnp.mean(r < t)) - 0.75) < 0.01
  # t = max of two sigmoid(N(-2, 2^2)) draws: P(t < 0.5) = P(both logits < 0) = Phi(1)^2
  assert abs(float(jnp.mean(t < 0.5)) - 0.8413**2) < 0.01


def test_guidance_mixes_the_velocities_and_dropped_labels_keep_v():
  """v~ = w v + k u(z, t, t | c) + (1 - w - k) u(z, t, t | no class) for labelled samples."""
  def net(params, z, noise, labels, train_, rng):  # u = label + 1, whatever z and t
    return jnp.broadcast_to((labels + 1.0)[:, None, None, None], z.shape)
  c = base.get_base_config()
  c.method = "meanflow"
  c.model.update(dict(time_inputs=2, class_conditional=True, null_class=True))
  c.meanflow.update(dict(cfg_omega=2.0, cfg_kappa=0.5, class_dropout=0.1))
  m = meanflow.create(c, net, SHAPE)
  z = jnp.zeros((3,) + SHAPE)
  v = jnp.full_like(z, 7.0)
  labels = jnp.asarray([0, 4, 10])  # 10 = no class
  out = m.guided_velocity({}, z, jnp.full((3,), 0.5), v, labels)
  want = [2.0 * 7 + 0.5 * (lab + 1) + (1 - 2.0 - 0.5) * 11 for lab in (0, 4)] + [7.0]
  np.testing.assert_allclose(out[:, 0, 0, 0], want, rtol=1e-6)
  dropped = m.drop_labels(jax.random.PRNGKey(0), jnp.zeros((20000,), jnp.int32))
  assert abs(float(jnp.mean(dropped == 10)) - 0.1) < 0.01


def test_jvp_total_derivative_matches_finite_differences_through_the_unet():
  """du/dt = v d_z u + d_t u from the method's jvp (tangents (v, 0, 1) on (z, r, t)) against a
  central difference along (z, r, t) + h (v, 0, 1), through a UNet with self-attention."""
  config, module, params = attention_unet("meanflow")
  m = meanflow.create(config, models.make_net(module), (16, 16, 1))

  @jax.jit
  def run(params):
    x = 0.5 * jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 1))
    e = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    r, t = m.draw_times(jax.random.PRNGKey(2), 4)
    t = jnp.clip(t, 0.1, 0.9)
    r = jnp.minimum(r, t - 0.05)
    z, v = flow.path(x, e, t), e - x
    u_tgt, u = m.target(params, z, r, t, v, None, None)
    dudt = (v - u_tgt) / karras.per_sample(t - r, v)
    fn = lambda zz, rr, tt: m.average_velocity(params, zz, rr, tt, None, True, None)
    h = 1e-2
    fd = (fn(z + h * v, r, t + h) - fn(z - h * v, r, t - h)) / (2 * h)
    return dudt, fd

  dudt, fd = run(params)
  assert float(jnp.max(jnp.abs(dudt))) > 1e-3
  np.testing.assert_allclose(dudt, fd, atol=2e-3 * float(jnp.max(jnp.abs(dudt))) + 1e-5)


def test_each_time_input_has_its_own_embedding():
  """Two time inputs: u changes with t - r alone; one input keeps the old parameter names."""
  config, module, params = attention_unet("meanflow")
  x = jnp.ones((2, 16, 16, 1))
  noise = jnp.asarray([[0.5, 0.0], [0.5, 0.4]])
  out = module.apply({"params": params}, x, noise)
  assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-4
  assert "GaussianFourierEmbedding_1" in params
  config.model.time_inputs = 1
  assert "GaussianFourierEmbedding_1" not in models.init_params(
      models.create_model(config.model, config.data), jax.random.PRNGKey(0), config.data)
  with pytest.raises(ValueError, match=r"2 time inputs per sample \(\[B, 2\]\)"):
    module.apply({"params": params}, x, jnp.zeros((2,)))


@pytest.mark.parametrize("keys,message", [
    ({"model.time_inputs": 1}, "model.time_inputs=2"),
    ({"meanflow.p_std": 0.0}, "p_std must be positive"),
    ({"meanflow.ratio_r_neq_t": 1.5}, "ratio_r_neq_t is a fraction"),
    ({"meanflow.norm_c": 0.0}, "norm_c > 0"),
    ({"meanflow.two_step_t": 1.0}, "two_step_t must lie in"),
    ({"meanflow.class_dropout": 0.1}, "model.null_class=True"),
    ({"meanflow.cfg_omega": 2.0}, "Classifier-free guidance"),
    ({"model.null_class": True, "model.class_conditional": False}, "needs model.class_conditional"),
    ({"model.time_inputs": 3}, "time_inputs must be 1"),
])
def test_bad_meanflow_configs_are_user_errors(keys, message):
  from cm_jax.train.experiment import Experiment
  config = digits.get_config("method=meanflow,runlocal")
  config.update_from_flattened_dict(keys)
  with pytest.raises(UserError, match=message):
    Experiment.from_config(config)


def test_sampling_times_are_checked():
  with pytest.raises(UserError, match=r"lie in \(0, 1\]"):
    flow.check_times([1.5])
  with pytest.raises(UserError, match="decrease strictly"):
    flow.check_times([0.5, 1.0])
  assert flow.uniform_times(4) == [1.0, 0.75, 0.5, 0.25]


@pytest.mark.parametrize("file", ["cifar10", "imagenet64"])
def test_paper_rows_trace_the_loss_through_their_networks(file):
  """The jvp target (and on ImageNet 64 the guidance passes with the 'no class' label) traced
  through NCSN++ and the ADM UNet with two time inputs: shapes only, nothing compiled."""
  from cm_jax.train.experiment import Experiment
  from configs import cifar10, imagenet64
  config = {"cifar10": cifar10, "imagenet64": imagenet64}[file].get_config(
      "method=meanflow,runlocal")
  exp = Experiment.from_config(config)
  params = exp.abstract_state().params
  n, shape = 2, exp.sample_shape
  batch = {"image": jax.ShapeDtypeStruct((n,) + shape, jnp.float32),
           "label": jax.ShapeDtypeStruct((n,), jnp.int32)}
  loss, aux = jax.eval_shape(lambda p, b: exp.method.loss(p, None, b, jax.random.PRNGKey(0), 0),
                             params, batch)
  assert loss.shape == () and set(aux) == {"mse", "r_neq_t"}
  assert exp.method.guided == (file == "imagenet64")
  if file == "imagenet64":  # 1000 classes + 'no class'
    assert params["Embed_0"]["embedding"].shape[0] == 1001
