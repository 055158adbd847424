"""The one jitted, sharded train step: loss, gradient, optimizer, EMA and target updates."""
from __future__ import annotations

import jax
import optax

from cm_jax import parallel
from cm_jax.train.state import TrainState


def ema_update(ema, params, rate):
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def make_train_step(method, tx: optax.GradientTransformation, ema_rate: float, mesh):
  """Returns step(state, batch, frozen) -> (state, metrics), jitted over the mesh.

  Parameters are replicated, the batch is split over the data axis; jit inserts the gradient
  all-reduce. One key per run, folded with the step, so the noise does not depend on sharding.
  `frozen`: read-only parameters the method needs besides its own (the CD teacher's EMA weights;
  None otherwise). Replicated and, unlike the state, not donated: an argument rather than a
  closure, so it is neither a compile-time constant nor part of the checkpointed state.
  """
  def step_fn(state: TrainState, batch, frozen):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(
        state.params, state.target_params, batch, rng, state.step, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, ema_rate),
        target_params=method.update_target(state.target_params, params, state.step),
        opt_state=opt_state,
    )
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    return new_state, metrics

  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=0)
