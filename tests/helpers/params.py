"""Untrained but non-trivial parameters for sampling tests, with nothing to compile."""
import jax
import numpy as np

from cm_jax import models


def random_params(exp, seed: int = 1, scale: float = 0.1):
  """Gaussian weights of the experiment's network shapes, drawn on the host.

  The real initialiser zeroes the output layer (F = 0: every sample would be scaled noise) and
  costs a compile; shapes from `eval_shape` and numpy noise cost neither.
  """
  shapes = jax.eval_shape(lambda k: models.init_params(exp.module, k, exp.config.data),
                          jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def attention_unet(method: str):
  """(config, module, params): the digits runlocal network shrunk to one level of 8 channels
  (its middle block keeps self-attention), unconditional, for `method`; initialised, then every
  parameter perturbed by N(0, 0.05^2) so the zero-initialised output layer makes the output
  depend on its inputs."""
  from configs import digits
  config = digits.get_config(f"method={method},runlocal")
  config.model.update(dict(channels=8, channel_mult=(1,), attn_resolutions=(),
                           class_conditional=False))
  module = models.create_model(config.model, config.data)
  params = models.init_params(module, jax.random.PRNGKey(0), config.data)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  return config, module, params
