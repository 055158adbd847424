"""Everything a config builds before training or sampling: network, method, optimizer, mesh."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from cm_jax import flow, karras, methods, models, parallel, plans, sampling, trigflow
from cm_jax.errors import UserError
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
               tx=state_lib.create_optimizer(config.optim, int(config.train.num_steps)),
               levels=karras.NoiseLevels.from_config(config.karras),
               sample_shape=shape,
               mesh=mesh or parallel.create_mesh(fsdp=int(config.parallel.fsdp)))

  def _init(self, rng) -> state_lib.TrainState:
    init_rng, state_rng = jax.random.split(rng)
    params = models.init_params(self.module, init_rng, self.config.data)
    # sCM's adaptive weighting head; {} for the other methods
    params = {**params, **self.method.extra_params(jax.random.fold_in(init_rng, 1))}
    return state_lib.init_state(params, self.tx, state_rng, self.method.has_target_network)

  def init_state(self, seed: int) -> state_lib.TrainState:
    """Initialises directly into the state's sharding (never whole on one host buffer first)."""
    init = jax.jit(self._init, out_shardings=self.state_sharding())
    return init(jax.random.PRNGKey(seed))

  def state_sharding(self):
    """The state's shardings: replicated, or split over the mesh's fsdp axis (parallel.fsdp)."""
    return parallel.state_shardings(jax.eval_shape(self._init, jax.random.PRNGKey(0)), self.mesh)

  def abstract_state(self):
    """Shapes, dtypes and shardings of the state, for Orbax restores."""
    shapes = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        parallel.state_shardings(shapes, self.mesh))

  @property
  def num_classes(self) -> int:
    """Classes the network is conditioned on; 0 = unconditional (it ignores labels)."""
    return int(self.config.data.num_classes) if self.config.model.class_conditional else 0

  def resolve_labels(self, labels, num_samples: int, seed: int, first_index: int = 0
                     ) -> Optional[np.ndarray]:
    """int32 [num_samples] labels for a class-conditional network, None for an unconditional one.

    labels: None or 'random' (label i drawn from (seed, i) alone, so it does not depend on the
    batch size), or ints: one per sample, or a single one for all.
    """
    if labels is None or (isinstance(labels, str) and labels == "random"):
      if not self.num_classes:
        return None
      idx = np.arange(first_index, first_index + num_samples, dtype=np.int32)
      return np.asarray(sampling.per_sample_labels(jax.random.PRNGKey(seed), idx,
                                                   self.num_classes))
    if not self.num_classes:
      raise UserError("This model is unconditional (model.class_conditional=False): it takes "
                      "no labels.")
    out = np.asarray(labels).reshape(-1)
    if not np.issubdtype(out.dtype, np.integer):
      raise UserError(f"Labels must be integers, got {out.tolist()}.")
    if out.size == 1:
      out = np.full((num_samples,), out[0])
    if out.size != num_samples:
      raise UserError(f"Got {out.size} labels for {num_samples} samples: give one per sample, "
                      "a single one for all, or 'random'.")
    if out.min() < 0 or out.max() >= self.num_classes:
      raise UserError(f"Labels must lie in [0, {self.num_classes - 1}], got {out.tolist()}.")
    return out.astype(np.int32)

  def eval_net(self, params, labels=None) -> Callable:
    """(x_in, c_noise) -> F: the network in eval mode (no dropout), parameters and labels bound."""
    return lambda x_in, noise: self.net(params, x_in, noise, labels, False, None)

  def consistency_fn(self, params, labels=None) -> sampling.ConsistencyFn:
    """f(x, sigma) in eval mode (no dropout) with parameters and labels bound. A MeanFlow model's
    is its average-velocity map in EDM's levels (flow.sigma_consistency)."""
    if self.is_flow:
      return flow.sigma_consistency(self.average_velocity_fn(params, labels))
    if self.is_trigflow:
      raise UserError(f"A method={self.config.method} model lives in TrigFlow time t in "
                      "[0, pi/2], not sigma: sample it with `Experiment.generate` (times), or "
                      "use `velocity_fn` with cm_jax.trigflow.")
    net = self.eval_net(params, labels)
    return lambda x, sigma: karras.consistency_function(net, x, sigma, self.levels)

  @property
  def is_denoiser(self) -> bool:
    """EDM and TrigFlow runs train a denoiser (D(x, s); TrigFlow's velocity), sampled by an ODE
    solver; the other methods train a consistency function, sampled in 1 or a few steps."""
    return methods.spec(self.config.method).is_denoiser

  @property
  def is_trigflow(self) -> bool:
    """trigflow / sCT / sCD: TrigFlow time t in [0, pi/2] (cm_jax/trigflow.py); consistency plans
    are decreasing times (pi/2 first), ODE plans run trigflow.ode_sample."""
    return methods.spec(self.config.method).is_trigflow

  @property
  def is_flow(self) -> bool:
    """MeanFlow: the average velocity u(z, r, t) on the flow path, t in [0, 1] (cm_jax/flow.py)."""
    return methods.spec(self.config.method).is_flow

  @property
  def plans_in_time(self) -> bool:
    """Consistency plans are decreasing times (TrigFlow in (0, pi/2], flow in (0, 1])."""
    return methods.spec(self.config.method).plans_in_time

  def average_velocity_fn(self, params, labels=None) -> flow.AverageVelocityFn:
    """MeanFlow's (z, r, t) -> u in eval mode, parameters and labels bound."""
    return flow.bind(self.eval_net(params, labels), float(self.config.meanflow.time_scale))

  def velocity_fn(self, params, labels=None) -> trigflow.VelocityFn:
    """TrigFlow's (x_t, t) -> F(x_t / sd, c_noise(t)) in eval mode, parameters and labels bound."""
    return trigflow.bind(self.eval_net(params, labels), self.levels.sigma_data,
                         float(self.config.scm.time_scale))

  def denoiser_fn(self, params, labels=None) -> Callable:
    """D(x, sigma) in eval mode (no dropout) with parameters and labels bound."""
    net = self.eval_net(params, labels)
    return lambda x, sigma: karras.denoiser(net, x, sigma, self.levels)

  def default_plan(self):
    """What a preview samples: 1 step from the noise end (sigma_max, pi/2 or t = 1), or the
    config's ODE solver for a denoiser (EDM, TrigFlow)."""
    return plans.resolve(self.config)

  def check_plan(self, plan) -> list[float]:
    """A consistency plan validated in the model's own time: sigmas, TrigFlow or flow times."""
    return plans.check_plan(self.config, plan)

  def sampler(self, plan, clip: bool = True):
    """jitted (params, key, indices [B], labels [B] | None) -> images [B, H, W, C] in [-1, 1].

    plan: decreasing sigmas for a consistency model (times in (0, pi/2] for sCT / sCD, in (0, 1]
    for MeanFlow), a
    `sampling.EDMPlan` for a denoiser (EDM or TrigFlow).
    Sharded over the batch axis. One compiled sampler per (plan, clip), kept for the life of
    the experiment (labels or none: one trace each).
    """
    if isinstance(plan, sampling.EDMPlan) != self.is_denoiser:
      raise UserError(
          f"A method={self.config.method} model is sampled with "
          + ("an ODE solver (sampling.EDMPlan: --edm_levels, --edm_solver), not consistency "
             "levels." if self.is_denoiser else "consistency levels (sigmas), not an ODE solver."))
    if not self.is_denoiser:
      plan = tuple(self.check_plan(plan))
    if (plan, clip) not in self._samplers:
      self._samplers[(plan, clip)] = self._build_sampler(plan, clip)
    return self._samplers[(plan, clip)]

  def _build_sampler(self, plan, clip: bool):
    def run(params, key, indices, labels=None):
      if self.is_flow:
        return flow.multistep_sample(self.average_velocity_fn(params, labels), key, indices,
                                     self.sample_shape, plan, clip=clip)
      if self.is_trigflow:
        velocity, sd = self.velocity_fn(params, labels), self.levels.sigma_data
        if self.is_denoiser:
          return trigflow.ode_sample(velocity, key, indices, self.sample_shape,
                                     plan.sigmas(self.levels), plan.solver, sd, clip=clip)
        return trigflow.multistep_sample(velocity, key, indices, self.sample_shape, plan, sd,
                                         clip=clip)
      if self.is_denoiser:
        return sampling.edm_sample(self.denoiser_fn(params, labels), key, indices,
                                   self.sample_shape, plan.sigmas(self.levels), plan.solver,
                                   clip=clip)
      return sampling.multistep_sample(self.consistency_fn(params, labels), key, indices,
                                       self.sample_shape, plan, self.levels, clip=clip)
    # (params, key) replicated, (indices, labels) split; every process reads the whole batch.
    return parallel.over_rows(run, self.mesh, num_fixed=2, num_rows=2)

  def generate(self, params, plan, num_samples: int, seed: int, batch_size: int = 256,
               first_index: int = 0, labels=None) -> np.ndarray:
    """uint8 [num_samples, H, W, C]; sample i depends only on (seed, i, plan, label i).

    plan: see `sampler` (sigmas or times for a consistency model, an EDMPlan for a denoiser).

    labels: see `resolve_labels` (a class-conditional network draws them when none are given).
    """
    run = self.sampler(plan, clip=bool(self.config.sample.clip))
    labels = self.resolve_labels(labels, num_samples, seed, first_index)
    # One (device-divisible) batch size, so the sampler compiles once.
    size = parallel.device_batch_size(batch_size, num_samples, self.mesh)
    # FSDP-split weights are gathered once for the whole loop; the key is a global array, as
    # jit wants for a mesh that spans processes.
    params = self._replicate(params)
    key = parallel.to_global(np.asarray(jax.random.PRNGKey(seed)), parallel.replicated(self.mesh))
    idx = np.arange(first_index, first_index + num_samples, dtype=np.int32)
    return parallel.map_in_batches(
        lambda i, lab: run(params, key, i, lab), [idx, labels], size,
        to_host=lambda images: sampling.to_uint8(jax.device_get(images)), progress="sampling")

  def _replicate(self, params):
    """Global arrays with another sharding (FSDP) -> replicated on this mesh; host arrays stay."""
    repl = parallel.replicated(self.mesh)
    needs = any(isinstance(x, jax.Array) and not x.sharding.is_fully_replicated
                for x in jax.tree.leaves(params))
    return parallel.reshard(params, repl) if needs else params
