"""The train state and the optimizer built from config."""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray            # int32 scalar: steps taken, also the data position
  params: Any
  ema_params: Any              # evaluation EMA (config.ema_rate)
  target_params: Optional[Any]  # CT target network; None when the teacher is stopgrad(params)
  opt_state: Any
  rng: jnp.ndarray             # uint32 [2]; folded with the step inside the train step


def create_optimizer(optim_config) -> optax.GradientTransformation:
  oc = optim_config
  lr = float(oc.learning_rate)
  schedule = optax.linear_schedule(0.0, lr, int(oc.warmup_steps)) if oc.warmup_steps else lr
  makers = {"adam": optax.adam, "radam": optax.radam}
  if oc.name not in makers:
    raise ValueError(f"Unknown optimizer {oc.name!r}; choose one of {', '.join(makers)}.")
  opt = makers[oc.name](schedule, b1=float(oc.b1), b2=float(oc.b2), eps=float(oc.eps))
  if oc.grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(float(oc.grad_clip)), opt)
  return opt


def init_state(params, tx: optax.GradientTransformation, rng, has_target_network: bool
               ) -> TrainState:
  copy = lambda tree: jax.tree.map(jnp.array, tree)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      ema_params=copy(params),
      target_params=copy(params) if has_target_network else None,
      opt_state=tx.init(params),
      rng=rng,
  )
