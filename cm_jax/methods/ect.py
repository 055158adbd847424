"""Easy consistency tuning (ECT, docs/maths.md §6; Geng et al. 2024), a
`consistency.ConsistencyTraining`.

ECT starts from a trained EDM network (`config.teacher`, an EDM workdir: the student's online
weights and evaluation EMA start from the teacher's, as CIFAR-10 CD does) and tunes it into a
consistency function with continuous levels instead of a grid:

- t ~ LogNormal(P_mean, P_std), clipped to [sigma_min, sigma_max];
- r = t (1 - q^-(a+1) (1 + k sigmoid(-b t))), clamped at >= 0 (r < sigma_min counts as 0),
  where the stage a = floor(step / stage_steps): every stage halves (q = 2) the gap t - r, so
  the target moves from the data itself (r = 0, a diffusion-like loss) towards a consistency
  condition between ever closer levels;
- the same noise for x_t = x + t z and x_r = x + r z; when r = 0 the target is x itself;
- teacher = stopgrad(current network) with the same dropout; loss w (sqrt(||f(x_t, t) -
  sg f(x_r, r)||^2 + c^2) - c), w = 1 / (t - r).

The network is the CM consistency parameterisation of karras.py, whose c_in and c_noise are the EDM
denoiser's and whose c_skip / c_out differ from EDM's only by the eps shift, so the EDM weights are a
consistency function f ~ D at the start. The teacher is only the starting point: nothing of it is
queried during training (`uses_teacher` is False; its MethodSpec names the workdir's method).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cm_jax import distances, karras
from cm_jax.errors import UserError
from cm_jax.methods import consistency, ict


def ect_stage(step, stage_steps: int):
  """a = floor(step / stage_steps)."""
  return jnp.asarray(step, jnp.int32) // stage_steps


def ect_r(t, stage, q: float, k: float, b: float):
  """r(t) = t (1 - q^-(a+1) (1 + k sigmoid(-b t))), clamped at >= 0."""
  gap = q ** (-(jnp.asarray(stage, jnp.float32) + 1.0)) * (1.0 + k * jax.nn.sigmoid(-b * t))
  return jnp.maximum(t * (1.0 - gap), 0.0)


def level_sampler(levels: karras.NoiseLevels, p_mean: float, p_std: float, q: float, k: float,
                  b: float, stage_steps: int):
  """(rng, step, B) -> (r [B], t [B]) for consistency.ContinuousPairs."""
  def draw(rng, step, batch_size):
    t = jnp.exp(p_mean + p_std * jax.random.normal(rng, (batch_size,)))
    t = jnp.clip(t, levels.sigma_min, levels.sigma_max)
    r = ect_r(t, ect_stage(step, stage_steps), q, k, b)
    # Below sigma_min the consistency parameterisation has no meaning: r < eps counts as r = 0.
    return jnp.where(r < levels.sigma_min, 0.0, r), t
  return draw


def create(config, net: consistency.Net, sample_shape) -> consistency.ConsistencyTraining:
  ec = config.ect
  stage_steps = int(ec.stage_steps)
  if stage_steps < 1:
    raise UserError(f"ect.stage_steps must be at least 1, got {stage_steps}.")
  if float(ec.q) <= 1:
    raise UserError(f"ect.q must be > 1 (the gap t - r shrinks by q each stage), got {ec.q}.")
  if float(ec.p_std) <= 0:
    raise UserError(f"ect.p_std must be positive, got {ec.p_std}.")
  c = float(ec.huber_c)
  if c < 0:
    c = distances.pseudo_huber_constant(sample_shape)
  levels = karras.NoiseLevels.from_config(config.karras)
  pairs = consistency.ContinuousPairs(
      sampler=level_sampler(levels, float(ec.p_mean), float(ec.p_std), float(ec.q), float(ec.k),
                            float(ec.b), stage_steps),
      values=lambda step: {"stage": ect_stage(step, stage_steps)})
  return consistency.ConsistencyTraining(
      net=net,
      levels=levels,
      distance=lambda a, b: distances.pseudo_huber(a, b, c),
      pairs=pairs,
      weight=ict.inverse_gap_weight,  # 1 / (t - r)
      target_decay=None,              # teacher = stopgrad(theta)
  )
