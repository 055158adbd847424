"""Mixed precision (model.dtype = bfloat16): float32 parameters, optimizer state and EMA;
float32 outputs close to the float32 network's."""
import jax
import jax.numpy as jnp
import pytest

from cm_jax import models
from cm_jax.train import state as state_lib
from tests.test_ncsnpp import perturbed_params, small_config


@pytest.mark.parametrize("name", ["ncsnpp", "adm", "tiny"])
def test_bfloat16_compute_float32_params_and_output(name):
  extra = dict(patch_size=2, attn_resolutions=(4,)) if name == "tiny" else {}
  c32 = small_config(name, dropout=0.0, **extra)
  c16 = small_config(name, dropout=0.0, dtype="bfloat16", **extra)
  m32 = models.create_model(c32.model, c32.data)
  m16 = models.create_model(c16.model, c16.data)
  params = perturbed_params(m16, c16.data)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  # The same parameter tree as the float32 network (checkpoints move between the two).
  shapes32 = jax.eval_shape(lambda k: models.init_params(m32, k, c32.data), jax.random.PRNGKey(0))
  assert jax.tree.structure(params) == jax.tree.structure(shapes32)
  tx = state_lib.create_optimizer(c16.optim, int(c16.train.num_steps))
  st = jax.eval_shape(lambda p: state_lib.init_state(p, tx, jax.random.PRNGKey(0), True), params)
  assert all(l.dtype in (jnp.float32, jnp.int32, jnp.uint32) for l in jax.tree.leaves(st))

  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  noise, labels = jnp.array([-1.0, 0.5]), None
  out16 = jax.jit(lambda p: models.make_net(m16)(p, x, noise, labels, False, None))(params)
  out32 = jax.jit(lambda p: models.make_net(m32)(p, x, noise, labels, False, None))(params)
  assert out16.dtype == jnp.float32 and out32.dtype == jnp.float32
  err = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < err < 0.05, err   # bfloat16 has ~3 significant digits

  # Gradients reach float32 parameters as float32.
  grads = jax.eval_shape(jax.grad(
      lambda p: jnp.mean(models.make_net(m16)(p, x, noise, labels, False, None))), params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
