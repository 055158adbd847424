"""The train state and the optimizer built from config."""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cm_jax.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray            # int32 scalar: steps taken, also the data position
  params: Any
  ema_params: Any              # evaluation EMA (config.ema_rate)
  target_params: Optional[Any]  # CT's (CD's, mu > 0) target network; None: target = sg(params)
  opt_state: Any
  rng: jnp.ndarray             # uint32 [2]; folded with the step inside the train step


DECAYS = ("constant", "cosine", "linear")


def learning_rate_schedule(optim_config, total_steps: int):
  """Linear warm-up over optim.warmup_steps, then optim.decay: constant, or cosine / linear from
  the peak down to optim.final_lr_fraction of it at step `total_steps` (train.num_steps)."""
  oc = optim_config
  lr, warmup = float(oc.learning_rate), int(oc.warmup_steps)
  decay = str(oc.get("decay", "constant"))
  if decay not in DECAYS:
    raise UserError(f"Unknown optim.decay {decay!r}; choose one of {', '.join(DECAYS)}.")
  final = float(oc.get("final_lr_fraction", 0.0))
  if not 0.0 <= final <= 1.0:
    raise UserError(f"optim.final_lr_fraction must lie in [0, 1], got {final}.")
  if decay == "constant":
    return optax.linear_schedule(0.0, lr, warmup) if warmup else lr
  if total_steps <= warmup:
    raise UserError(f"optim.decay={decay} needs train.num_steps ({total_steps}) > "
                    f"optim.warmup_steps ({warmup}).")
  if decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup, total_steps,
                                              end_value=final * lr)
  tail = optax.linear_schedule(lr, final * lr, total_steps - warmup)
  if not warmup:
    return tail
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), tail], [warmup])


def create_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  oc = optim_config
  schedule = learning_rate_schedule(oc, total_steps)
  makers = {"adam": optax.adam, "radam": optax.radam}
  if oc.name not in makers:
    raise UserError(f"Unknown optimizer {oc.name!r}; choose one of {', '.join(makers)}.")
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
