"""The ADM UNet: parameter counts of the paper configurations (through jax.eval_shape, nothing
allocated), the time input, small forward passes of both variants, and jax.jvp through it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import models
from cm_jax.models import unet
from configs import base
from tests.test_ncsnpp import count, perturbed_params, small_config

# What this layout gives for the settings of docs/maths.md §12 (3 output channels, learn_sigma off
# as in the CM release). ImageNet 64 agrees with the 295.9M the EDM paper reports for this ADM
# network; we found no published exact count to compare the LSUN figure with.
IMAGENET64_PARAMS = 295_899_267
LSUN256_PARAMS = 526_304_771


def paper_config(resolution, **model):
  c = base.get_base_config()
  c.data.update(dict(resolution=resolution, channels=3, num_classes=1000))
  c.model.update(dict(name="adm", attn_resolutions=(32, 16, 8), num_head_channels=64,
                      resblock_updown=True, **model))
  return c


def test_imagenet64_parameter_count():
  c = paper_config(64, channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                   use_scale_shift_norm=True, class_conditional=True)
  assert count(models.create_model(c.model, c.data), 64) == IMAGENET64_PARAMS


def test_lsun256_parameter_count():
  c = paper_config(256, channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                   use_scale_shift_norm=False, class_conditional=False)
  assert count(models.create_model(c.model, c.data), 256) == LSUN256_PARAMS


def test_timestep_embedding_is_guided_diffusions():
  t = jnp.array([0.0, 3.0])
  emb = unet.timestep_embedding(t, 8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  np.testing.assert_allclose(emb, np.concatenate([np.cos(np.outer(t, freqs)),
                                                  np.sin(np.outer(t, freqs))], 1), rtol=1e-6)


@pytest.mark.parametrize("scale_shift, updown, classes", [(True, True, True),
                                                          (False, False, False)])
def test_forward(scale_shift, updown, classes):
  c = small_config("adm", use_scale_shift_norm=scale_shift, resblock_updown=updown,
                   class_conditional=classes)
  module = models.create_model(c.model, c.data)
  params = perturbed_params(module, c.data)
  net = jax.jit(models.make_net(module), static_argnums=(4,))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  labels = jnp.array([1, 2]) if classes else None
  out = net(params, x, jnp.array([-1.0, 0.5]), labels, False, None)
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  # the time input matters: c_noise enters as 1000 c_noise
  other = net(params, x, jnp.array([-1.001, 0.5]), labels, False, None)
  assert not np.allclose(out[0], other[0]) and np.allclose(out[1], other[1], atol=1e-6)


@pytest.mark.slow
def test_jvp_through_the_network():
  c = small_config("adm", dropout=0.0, num_head_channels=16)   # two heads of 16 at 8 px
  module = models.create_model(c.model, c.data)
  params = perturbed_params(module, c.data)
  net = jax.jit(models.make_net(module), static_argnums=(4,))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  t = jnp.array([0.3, -0.2])
  dx = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  # dt small: the time input is scaled by 1000 before the sinusoids
  dt = jnp.full_like(t, 1e-3)
  f = lambda x, t: net(params, x, t, None, False, None)
  out, tangent = jax.jvp(f, (x, t), (dx, dt))
  eps = 1e-2
  fd = (f(x + eps * dx, t + eps * dt) - f(x - eps * dx, t - eps * dt)) / (2 * eps)
  assert tangent.shape == out.shape
  np.testing.assert_allclose(tangent, fd, rtol=0.05, atol=0.05 * float(jnp.abs(fd).max()))


def test_heads_must_divide_the_widths():
  c = small_config("adm", num_head_channels=24)
  with pytest.raises(ValueError, match="num_head_channels"):
    models.create_model(c.model, c.data)
