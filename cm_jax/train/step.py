"""The one jitted, sharded train step: loss, gradient, optimizer, EMA and target updates."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cm_jax import parallel
from cm_jax.train.state import TrainState


def ema_update(ema, params, rate):
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def micro_batches(batch, grad_accum: int, mesh):
  """[B, ...] leaves -> [K, B/K, ...]: micro-batch k holds rows k, k + K, k + 2K, ..., so each
  micro-batch keeps rows on every device (no data moves when K divides the rows per device)."""
  spec = parallel.batch_sharding(mesh).spec
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *spec))

  def split(x):
    x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, sharding)
  return jax.tree.map(split, batch)


def loss_and_grad(method, params, target_params, batch, rng, step, frozen, *, grad_accum: int = 1,
                  mesh=None):
  """((loss, aux), grads) of the batch. With grad_accum = K > 1 the batch runs as K micro-batches
  in a scan (one micro-batch's activations alive at a time) and loss, aux and gradients are their
  means, which for a loss that is a mean over examples is the full batch's. Micro-batch k draws
  its noise from `rng` folded with k: the same distribution as the unsplit step, other draws."""
  value_and_grad = jax.value_and_grad(method.loss, has_aux=True)
  if grad_accum == 1:
    return value_and_grad(params, target_params, batch, rng, step, frozen)
  micro = micro_batches(batch, grad_accum, mesh)

  def one(k, mb):
    return value_and_grad(params, target_params, mb, jax.random.fold_in(rng, k), step, frozen)

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(one, 0, first))

  def body(total, xs):
    return jax.tree.map(jnp.add, total, one(*xs)), None

  total, _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
  return jax.tree.map(lambda t: t / grad_accum, total)


def make_train_step(method, tx: optax.GradientTransformation, ema_rate: float, mesh, *,
                    skip_nonfinite: bool = False, state_sharding=None, grad_accum: int = 1):
  """Returns step(state, batch, frozen) -> (state, metrics), jitted over the mesh.

  Parameters are replicated (or split over the mesh's fsdp axis: `state_sharding`, a tree of
  shardings like the state's, from `parallel.state_shardings`), the batch is split over every
  device; jit inserts the gradient all-reduce. One key per run, folded with the step, so the noise
  does not depend on sharding.
  `frozen`: read-only parameters the method needs besides its own (the EMA weights of the
  teacher CD or sCD queries; None otherwise). Replicated and, unlike the state, not donated: an
  argument rather than a closure, so it is neither a compile-time constant nor part of the
  checkpointed state.

  metrics['nonfinite'] is 1 when the loss or the gradient norm is not finite. With
  `skip_nonfinite` such a step leaves params, EMA, target and optimizer state as they were (the
  step counter, i.e. the data position, still advances past the bad batch).
  `grad_accum` = K splits each batch into K micro-batches (loss_and_grad): the memory of B / K.
  """
  def step_fn(state: TrainState, batch, frozen):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = loss_and_grad(method, state.params, state.target_params, batch, rng,
                                       state.step, frozen, grad_accum=grad_accum, mesh=mesh)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_update(state.ema_params, params, ema_rate),
        target_params=method.update_target(state.target_params, params, state.step),
        opt_state=opt_state,
    )
    if skip_nonfinite:
      keep = state.replace(step=state.step + 1)
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, keep)
    metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
    return new_state, metrics

  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state_sh = repl if state_sharding is None else state_sharding
  return jax.jit(step_fn, in_shardings=(state_sh, data, repl), out_shardings=(state_sh, repl),
                 donate_argnums=0)


def make_finite_check(mesh):
  """jitted state -> bool scalar (replicated): every float leaf of the state is finite. Run before
  each save, so no checkpoint ever holds NaN or inf."""
  def all_finite(state):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
  return jax.jit(all_finite, out_shardings=parallel.replicated(mesh))
