"""Consistency distillation (CD, docs/maths.md §2), a `consistency.ConsistencyTraining`.

The only difference from CT is x_lo: one Heun (or Euler) step of the teacher's probability-flow
ODE from (x_hi, s_{n+1}) down to s_n, with the teacher's EMA weights in eval mode, instead of
x + s_n z. N is fixed (18 for CIFAR-10, 40 for ImageNet 64), pairs uniform, lambda = 1 (or iCT's
1 / (s_{n+1} - s_n): distill.weighting), and the target network is an EMA with a constant mu (0:
the target is stopgrad(theta), no copy kept).

The teacher's parameters reach the loss as `frozen` (a non-donated argument of the train step),
so they are neither baked into the compiled step nor checkpointed with the student.
"""
from __future__ import annotations

import jax.numpy as jnp

from cm_jax import distances, karras, ode
from cm_jax.errors import UserError
from cm_jax.methods import consistency


def teacher_step(teacher_net: consistency.Net, levels: karras.NoiseLevels,
                 solver: str) -> consistency.TeacherStep:
  """(teacher_params, x_hi, sigma_hi [B], sigma_lo [B], labels) -> x_lo; teacher in eval mode."""
  step = ode.get_step(solver)

  def run(teacher_params, x_hi, sigma_hi, sigma_lo, labels):
    net = lambda x_in, noise: teacher_net(teacher_params, x_in, noise, labels, False, None)
    denoise = lambda x, sigma: karras.denoiser(net, x, sigma, levels)
    return step(denoise, x_hi, sigma_hi, sigma_lo)
  return run


def create(config, net: consistency.Net, sample_shape) -> consistency.ConsistencyTraining:
  dc = config.distill
  n, mu = int(dc.num_levels), float(dc.target_decay)
  if n < 2:
    raise UserError(f"distill.num_levels must be at least 2, got {n}.")
  if not 0 <= mu < 1:
    raise UserError(f"distill.target_decay must lie in [0, 1), got {mu}.")
  levels = karras.NoiseLevels.from_config(config.karras)
  return consistency.ConsistencyTraining(
      net=net,
      levels=levels,
      distance=distances.get_distance(config.consistency.distance, sample_shape,
                                      config.consistency.lpips_weights),
      pairs=consistency.GridPairs(levels, lambda step: jnp.int32(n),
                                  consistency.uniform_pair_index),
      weight=consistency.get_weight(str(dc.weighting), "distill.weighting"),
      target_decay=(lambda step: jnp.float32(mu)) if mu > 0 else None,
      # The student's network config equals the teacher's (checked when the teacher is loaded).
      teacher_step=teacher_step(net, levels, str(dc.solver)),
  )
