"""NCSN++: the released parameter count, FIR resampling against a direct upfirdn, small forward
passes, class conditioning, forward-mode differentiation and clear errors for bad settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import models
from cm_jax.models import layers
from configs import base


def small_config(name="ncsnpp", resolution=16, **model):
  c = base.get_base_config()
  c.data.update(dict(name="test", resolution=resolution, channels=3, num_classes=10))
  c.model.update(dict(name=name, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attn_resolutions=(8,), num_head_channels=32, dropout=0.1))
  c.model.update(model)
  return c


def perturbed_params(module, data_config, scale=0.05, seed=0):
  """Random parameters of the module's shapes, made on the host (no XLA compile of the
  initialisers, slow on a busy CPU): GroupNorm scales 1 + N(0, scale^2), everything else
  N(0, scale^2), so zero-initialised layers are not zero."""
  shapes = jax.eval_shape(lambda k: models.init_params(module, k, data_config),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  def make(path, s):
    noise = scale * rng.standard_normal(s.shape).astype(np.float32)
    return jnp.asarray(noise + (1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0))
  return jax.tree_util.tree_map_with_path(make, shapes)


def count(module, resolution, channels=3):
  x = jnp.zeros((1, resolution, resolution, channels))
  shapes = jax.eval_shape(
      lambda k: module.init({"params": k}, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
      ["params"], jax.random.PRNGKey(0))
  return models.num_params(shapes)


def test_cifar10_parameter_count_is_the_released_definition():
  c = base.get_base_config()
  c.data.update(dict(resolution=32, channels=3))
  c.model.update(dict(name="ncsnpp", channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                      attn_resolutions=(16,), fourier_scale=16.0))
  assert count(models.create_model(c.model, c.data), 32) == 56_395_651


def upfirdn_reference(x, up, down, pad0, pad1):
  """scipy.signal.upfirdn-style reference in numpy (per channel, separable [1,3,3,1] FIR):
  zero-insert by `up`, pad, correlate with the normalised 2D kernel times up^2, keep every
  `down`-th pixel."""
  k1 = np.array([1.0, 3.0, 3.0, 1.0])
  k = np.outer(k1, k1)
  k = k / k.sum() * up * up
  b, h, w, c = x.shape
  u = np.zeros((b, h * up, w * up, c))
  u[:, ::up, ::up] = x
  u = np.pad(u, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
  oh, ow = u.shape[1] - 3, u.shape[2] - 3
  out = np.zeros((b, oh, ow, c))
  for i in range(4):
    for j in range(4):
      out += k[i, j] * u[:, i:i + oh, j:j + ow]
  return out[:, ::down, ::down]


def test_fir_resampling_matches_upfirdn():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
  # StyleGAN2's downsample_2d / upsample_2d paddings for k = [1,3,3,1], factor 2.
  np.testing.assert_allclose(jax.jit(layers.fir_downsample)(jnp.asarray(x)),
                             upfirdn_reference(x, 1, 2, 1, 1), atol=1e-5)
  np.testing.assert_allclose(jax.jit(layers.fir_upsample)(jnp.asarray(x)),
                             upfirdn_reference(x, 2, 1, 2, 1), atol=1e-5)
  # conv_downsample_2d: pad 2 each side, FIR, then a stride-2 VALID 3x3 conv.
  module = layers.FIRConvDown(4)
  params = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  kernel = np.asarray(params["params"]["Conv_0"]["kernel"])
  bias = np.asarray(params["params"]["Conv_0"]["bias"])
  blurred = upfirdn_reference(x, 1, 1, 2, 2)                       # [2, 9, 9, 3]
  expect = np.zeros((2, 4, 4, 4)) + bias
  for i in range(3):
    for j in range(3):
      expect += np.einsum("bhwc,co->bhwo", blurred[:, i:i + 7:2, j:j + 7:2], kernel[i, j])
  np.testing.assert_allclose(jax.jit(module.apply)(params, jnp.asarray(x)), expect, atol=1e-4)


@pytest.mark.slow
def test_forward_shapes_class_conditioning_and_dropout():
  c = small_config(class_conditional=True)
  module = models.create_model(c.model, c.data)
  net = jax.jit(models.make_net(module), static_argnums=(4,))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  noise = jnp.array([-1.0, 0.5])
  params = perturbed_params(module, c.data)
  a = net(params, x, noise, jnp.array([1, 2]), False, None)
  b = net(params, x, noise, jnp.array([3, 2]), False, None)
  assert np.all(np.isfinite(a))
  assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-6)
  # dropout is active in train mode only, and keyed by the rng
  t1 = net(params, x, noise, jnp.array([1, 2]), True, jax.random.PRNGKey(3))
  t2 = net(params, x, noise, jnp.array([1, 2]), True, jax.random.PRNGKey(4))
  assert not np.allclose(t1, t2)


@pytest.mark.slow
def test_zero_initialised_output():
  """F = 0 at initialisation (zero output convs), on the smallest network (real initialisers)."""
  c = small_config(resolution=8, channels=8, channel_mult=(1,), attn_resolutions=())
  module = models.create_model(c.model, c.data)
  params = jax.jit(lambda k: models.init_params(module, k, c.data))(jax.random.PRNGKey(0))
  out = jax.jit(models.make_net(module), static_argnums=(4,))(
      params, jnp.ones((1, 8, 8, 3)), jnp.zeros((1,)), None, False, None)
  assert out.shape == (1, 8, 8, 3) and not np.any(np.asarray(out))


@pytest.mark.slow
def test_jvp_through_the_network():
  """sCM's tangent: jax.jvp through the whole network, attention included."""
  c = small_config(dropout=0.0)
  module = models.create_model(c.model, c.data)
  params = perturbed_params(module, c.data)
  net = jax.jit(models.make_net(module), static_argnums=(4,))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  t = jnp.array([0.3, -0.2])
  f = lambda x, t: net(params, x, t, None, False, None)
  dx = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  out, tangent = jax.jvp(f, (x, t), (dx, jnp.ones_like(t)))
  eps = 1e-3
  fd = (f(x + eps * dx, t + eps) - f(x - eps * dx, t - eps)) / (2 * eps)
  assert tangent.shape == out.shape
  np.testing.assert_allclose(tangent, fd, rtol=0.05, atol=0.05 * float(jnp.abs(fd).max()))


@pytest.mark.parametrize("change, message", [
    (dict(name="resnet"), "Unknown model"),
    (dict(attn_resolutions=(4,)), "never occur"),
    (dict(dtype="float16"), "Unknown model.dtype"),
    (dict(channel_mult=(1, 2, 2, 2, 2, 2)), "does not fit"),
    (dict(remat="some"), "Unknown model.remat"),
    (dict(name="tiny", remat="dots"), "tiny network has no remat"),
])
def test_bad_settings_are_clear_errors(change, message):
  c = small_config(resolution=16)
  c.model.update(change)
  with pytest.raises(ValueError, match=message):
    models.create_model(c.model, c.data)


def test_class_conditional_without_labels_is_an_error():
  c = small_config(class_conditional=True)
  c.data.num_classes = 0
  with pytest.raises(ValueError, match="no labels"):
    models.create_model(c.model, c.data)


@pytest.mark.parametrize("kernel,side,route", [(3, 32, "custom_jvp"), (3, 8, "custom_jvp"),
                                               (3, 4, "conv_general_dilated"), (1, 16, "dot_general")])
def test_cpu_conv_rewrites_match_lax(kernel, side, route):
  """layers.cpu_fast_conv (what the paper networks' convs call): 3x3 maps of >= 8x8 through the
  matmul-gradient custom_jvp, 1x1 through a matmul, smaller maps through lax; the same values,
  gradients and forward-mode tangents as lax.conv_general_dilated, second order included; and
  layers.plain_convs() turns the rewrites off."""
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k1, (2, side, side, 4))
  w = jax.random.normal(k2, (kernel, kernel, 4, 5))
  g = jax.random.normal(k3, (2, side, side, 5))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
  fast = lambda x, w: layers.cpu_fast_conv(x, w, (1, 1), "SAME", dimension_numbers=dn)
  assert route in str(jax.make_jaxpr(fast)(x, w))   # the route taken on CPU
  with layers.plain_convs():   # traced afresh (jax caches traces per function)
    plain = str(jax.make_jaxpr(lambda x, w: fast(x, w))(x, w))
  assert "conv_general_dilated" in plain and "custom_jvp" not in plain and "dot_general" not in plain

  def derivatives(conv):
    grads = jax.grad(lambda x, w: jnp.sum(conv(x, w) * g), argnums=(0, 1))(x, w)
    tangent = jax.jvp(conv, (x, w), (0.3 * x, 0.2 * w))[1]
    only_x = jax.jvp(lambda x: conv(x, w), (x,), (0.3 * x,))[1]    # sCM's kind of JVP
    second = jax.grad(lambda w: jnp.sum(jax.jvp(lambda x: conv(x, w), (x,), (x,))[1] ** 2))(w)
    return conv(x, w), grads, tangent, only_x, second
  a, b = jax.jit(lambda: derivatives(fast))(), jax.jit(lambda: derivatives(ref))()
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * float(jnp.abs(v).max()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ncsnpp", "adm"])
def test_remat_changes_memory_not_results(name):
  """model.remat (jax.checkpoint around every residual and attention block) keeps the parameter
  names and gives the same loss and gradients, dropout included; the backward pass of 'full'
  recomputes the blocks (remat in the jaxpr)."""
  data = small_config(name).data
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  t = jnp.array([-0.5, 0.7])
  labels = jnp.array([1, 3])
  params = perturbed_params(models.create_model(small_config(name).model, data), data)

  def loss_and_grads(remat):
    net = models.make_net(models.create_model(small_config(name, remat=remat).model, data))
    loss = lambda p: jnp.mean(net(p, x, t, labels, True, jax.random.PRNGKey(2)) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(jax.grad(loss))(params)

  (ref, ref_grads), _ = loss_and_grads("none")
  for remat in ("dots", "full"):
    (value, grads), jaxpr = loss_and_grads(remat)
    assert "remat" in str(jaxpr) or "checkpoint" in str(jaxpr)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)   # same parameter names
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    scale = max(float(jnp.abs(r).max()) for r in jax.tree.leaves(ref_grads))
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):   # some are ~0: noise
      np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale)
