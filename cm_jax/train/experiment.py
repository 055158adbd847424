"""Everything a config builds before training or sampling: network, method, optimizer, mesh."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from cm_jax import karras, methods, models, parallel, sampling
from cm_jax.train import state as state_lib


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  module: nn.Module
  net: Callable
  method: Any
  tx: optax.GradientTransformation
  levels: karras.NoiseLevels
  sample_shape: tuple[int, int, int]
  mesh: Mesh
  _samplers: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh: Optional[Mesh] = None
                  ) -> "Experiment":
    module = models.create_model(config.model, config.data)
    net = models.make_net(module)
    shape = models.sample_shape(config.data)
    return cls(config=config, module=module, net=net,
               method=methods.create_method(config, net, shape),
               tx=state_lib.create_optimizer(config.optim),
               levels=karras.NoiseLevels.from_config(config.karras),
               sample_shape=shape, mesh=mesh or parallel.create_mesh())

  def _init(self, rng) -> state_lib.TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = models.init_params(self.module, init_rng, self.config.data)
    return state_lib.init_state(params, self.tx, state_rng, self.method.has_target_network)

  def init_state(self, seed: int) -> state_lib.TrainState:
    """Initialises directly into the replicated sharding (never whole on one host buffer first)."""
    init = jax.jit(self._init, out_shardings=parallel.replicated(self.mesh))
    return init(jax.random.PRNGKey(seed))

  def abstract_state(self):
    """Shapes, dtypes and shardings of the state, for Orbax restores."""
    shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    repl = parallel.replicated(self.mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)

  def consistency_fn(self, params, labels=None) -> sampling.ConsistencyFn:
    """f(x, sigma) in eval mode (no dropout) with parameters and labels bound."""
    def f(x, sigma):
      net = lambda x_in, noise: self.net(params, x_in, noise, labels, False, None)
      return karras.consistency_function(net, x, sigma, self.levels)
    return f

  def sampler(self, sigmas: Sequence[float], clip: bool = True):
    """jitted (params, key, indices [B]) -> images [B, H, W, C] in [-1, 1], sharded over devices.

    One compiled sampler per (levels, clip), kept for the life of the experiment.
    """
    sigmas = tuple(float(s) for s in sampling.check_sigmas(sigmas, self.levels))
    if (sigmas, clip) not in self._samplers:
      self._samplers[(sigmas, clip)] = self._build_sampler(sigmas, clip)
    return self._samplers[(sigmas, clip)]

  def _build_sampler(self, sigmas: tuple[float, ...], clip: bool):
    def run(params, key, indices):
      return sampling.multistep_sample(self.consistency_fn(params), key, indices,
                                       self.sample_shape, sigmas, self.levels, clip=clip)
    repl, data = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
    return jax.jit(run, in_shardings=(repl, repl, data), out_shardings=data)

  def generate(self, params, sigmas, num_samples: int, seed: int, batch_size: int = 256,
               first_index: int = 0) -> np.ndarray:
    """uint8 [num_samples, H, W, C]; sample i depends only on (seed, i, sigmas)."""
    run = self.sampler(sigmas, clip=bool(self.config.sample.clip))
    devices = self.mesh.devices.size
    round_up = lambda n: -(-n // devices) * devices
    # Every call has the same (device-divisible) size, so the sampler compiles once; the last
    # batch is padded with the indices that follow and trimmed.
    batch_size = round_up(max(1, min(batch_size, num_samples)))
    key = jax.random.PRNGKey(seed)
    out = []
    for start in range(0, num_samples, batch_size):
      count = min(batch_size, num_samples - start)
      idx = jnp.arange(first_index + start, first_index + start + batch_size, dtype=jnp.int32)
      out.append(sampling.to_uint8(jax.device_get(run(params, key, idx)))[:count])
    return np.concatenate(out, axis=0)
