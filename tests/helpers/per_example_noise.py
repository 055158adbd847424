"""A method wrapper whose batch loss does not depend on how the batch is split: each example
draws its noise (levels, z, dropout) from a key of its own id, and the loss is the mean over
examples. What makes a split step comparable with the unsplit one on a real network and loss."""
import jax
import jax.numpy as jnp

ID_KEY = "id"
_NOISE = jax.random.PRNGKey(1234)


class PerExampleNoise:

  def __init__(self, method):
    self.method = method

  def __getattr__(self, name):
    return getattr(self.method, name)

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    del rng  # the split step folds it with the micro-batch index: not used here on purpose
    examples = {k: v[:, None] for k, v in batch.items() if k != ID_KEY}

    def one(example, i):
      return self.method.loss(params, target_params, example, jax.random.fold_in(_NOISE, i),
                              step, frozen)
    losses, aux = jax.vmap(one)(examples, batch[ID_KEY])
    return jnp.mean(losses), jax.tree.map(jnp.mean, aux)
