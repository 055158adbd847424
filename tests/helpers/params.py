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
