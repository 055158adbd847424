"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"; docs/meanflow.md).

On the flow path z_t = (1 - t) x + t e of cm_jax/flow.py the network u_theta(z, r, t) models the
average velocity over [r, t]. The MeanFlow identity u = v - (t - r) du/dt, with the total
derivative du/dt = v d_z u + d_t u along the trajectory, gives the regression target

    u_tgt = stopgrad(v - (t - r) (v d_z u_theta + d_t u_theta)),  v = e - x,

whose derivative comes from one forward-mode `jax.jvp` through the whole network (attention
included) with tangents (v, 0, 1) on (z, r, t), as sCM's tangent does (methods/scm.py: the jvp
pass runs on stopgrad(params), the gradient comes from a second forward pass with the same dropout
key). The loss is the squared l2 norm over the image, ||delta||^2, weighted per sample by
stopgrad(1 / (||delta||^2 + c)^p). t and r are two logit-normal draws (t the larger); a fraction
1 - ratio of the samples has r = t, where the target is the flow-matching velocity v.

Classifier-free guidance is folded into the target (the paper's appendix): for labelled samples
v becomes v~ = w v + k u(z, t, t | c) + (1 - w - k) u(z, t, t | no class), both network terms
stopgrad and in eval mode, while a fraction of the labels is replaced by the 'no class' label
(index num_classes, `model.null_class`), whose samples keep v. Sampling then needs one evaluation
per step and no guidance.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cm_jax import flow, karras
from cm_jax.errors import UserError
from cm_jax.methods import consistency
from cm_jax.methods.contract import NoTargetNetwork


@dataclasses.dataclass(frozen=True)
class MeanFlow(NoTargetNetwork):
  net: consistency.Net
  p_mean: float = -0.4
  p_std: float = 1.0
  ratio_r_neq_t: float = 0.25
  norm_p: float = 1.0
  norm_c: float = 1e-3
  time_scale: float = 1.0
  cfg_omega: float = 1.0
  cfg_kappa: float = 0.0
  class_dropout: float = 0.0
  num_classes: int = 0  # the data's; the 'no class' label is this index

  uses_teacher = False

  @property
  def guided(self) -> bool:
    return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

  def average_velocity(self, params, z, r, t, labels, train: bool, rng):
    """u(z, r, t) [B, H, W, C]; r, t [B]."""
    net = lambda z_in, c_noise: self.net(params, z_in, c_noise, labels, train, rng)
    return flow.bind(net, self.time_scale)(z, r, t)

  def draw_times(self, rng, batch_size: int):
    """(r, t) [B] with 0 <= r <= t <= 1: two logit-normal draws ordered, then r = t for a
    fraction 1 - ratio_r_neq_t of the samples."""
    rng_a, rng_b, rng_same = jax.random.split(rng, 3)
    logit = lambda k: jax.nn.sigmoid(self.p_mean + self.p_std * jax.random.normal(k, (batch_size,)))
    a, b = logit(rng_a), logit(rng_b)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    same = jax.random.uniform(rng_same, (batch_size,)) >= self.ratio_r_neq_t
    return jnp.where(same, t, r), t

  def drop_labels(self, rng, labels):
    """Labels with a fraction class_dropout replaced by 'no class' (None stays None)."""
    if labels is None or self.class_dropout <= 0:
      return labels
    drop = jax.random.uniform(rng, labels.shape) < self.class_dropout
    return jnp.where(drop, self.num_classes, labels).astype(labels.dtype)

  def guided_velocity(self, params, z, t, v, labels):
    """v~ for the labelled samples, v for those whose label is 'no class' (stopgrad)."""
    if not self.guided:
      return v
    params = jax.lax.stop_gradient(params)
    null = jnp.full_like(labels, self.num_classes)
    u_null = self.average_velocity(params, z, t, t, null, False, None)
    mixed = self.cfg_omega * v + (1.0 - self.cfg_omega - self.cfg_kappa) * u_null
    if self.cfg_kappa != 0.0:
      mixed = mixed + self.cfg_kappa * self.average_velocity(params, z, t, t, labels, False, None)
    keep = karras.per_sample(labels != self.num_classes, v)
    return jax.lax.stop_gradient(jnp.where(keep, mixed, v))

  def target(self, params, z, r, t, v, labels, rng):
    """(u_tgt, u at stopgrad(params)): the MeanFlow identity's right-hand side from one jvp."""
    fn = lambda z_, r_, t_: self.average_velocity(params, z_, r_, t_, labels, True, rng)
    u, dudt = jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t)))
    return jax.lax.stop_gradient(v - karras.per_sample(t - r, v) * dudt), u

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    del target_params, step, frozen
    x, labels = batch["image"], batch.get("label")
    rng_t, rng_e, rng_label, rng_dropout = jax.random.split(rng, 4)
    r, t = self.draw_times(rng_t, x.shape[0])
    e = jax.random.normal(rng_e, x.shape, x.dtype)
    z = flow.path(x, e, t)
    labels = self.drop_labels(rng_label, labels)
    v = e - x if labels is None else self.guided_velocity(params, z, t, e - x, labels)
    u_tgt, _ = self.target(jax.lax.stop_gradient(params), z, r, t, v, labels, rng_dropout)
    # The same dropout key as the jvp pass: the prediction equals its primal, its gradient is u's.
    u = self.average_velocity(params, z, r, t, labels, True, rng_dropout)
    delta = (u - u_tgt).reshape(x.shape[0], -1).astype(jnp.float32)
    sq = jnp.sum(jnp.square(delta), axis=1)  # ||delta||^2 per sample
    weight = jax.lax.stop_gradient(1.0 / jnp.power(sq + self.norm_c, self.norm_p))
    return jnp.mean(weight * sq), {"mse": jnp.mean(sq) / delta.shape[1],
                                   "r_neq_t": jnp.mean((r < t).astype(jnp.float32))}


def create(config, net: consistency.Net, sample_shape) -> MeanFlow:
  del sample_shape
  mf, mc = config.meanflow, config.model
  if int(mc.get("time_inputs", 1)) != 2:
    raise UserError("method=meanflow needs a network with two time inputs (t, t - r): set "
                    "model.time_inputs=2 (configs/*.py:method=meanflow do).")
  if float(mf.p_std) <= 0:
    raise UserError(f"meanflow.p_std must be positive, got {mf.p_std}.")
  if not 0.0 <= float(mf.ratio_r_neq_t) <= 1.0:
    raise UserError(f"meanflow.ratio_r_neq_t is a fraction in [0, 1], got {mf.ratio_r_neq_t}.")
  if float(mf.norm_p) < 0 or float(mf.norm_c) <= 0:
    raise UserError(f"meanflow.norm_p must be >= 0 and meanflow.norm_c > 0, got "
                    f"{mf.norm_p} and {mf.norm_c}.")
  if float(mf.time_scale) <= 0:
    raise UserError(f"meanflow.time_scale must be positive, got {mf.time_scale}.")
  if not 0.0 < float(mf.two_step_t) < 1.0:
    raise UserError(f"meanflow.two_step_t must lie in (0, 1), got {mf.two_step_t}.")
  if not 0.0 <= float(mf.class_dropout) < 1.0:
    raise UserError(f"meanflow.class_dropout is a fraction in [0, 1), got {mf.class_dropout}.")
  if float(mf.class_dropout) > 0 and not mc.get("null_class", False):
    raise UserError("meanflow.class_dropout > 0 replaces labels by 'no class': set "
                    "model.null_class=True so the network has that label.")
  guided = float(mf.cfg_omega) != 1.0 or float(mf.cfg_kappa) != 0.0
  if guided and (not mc.class_conditional or float(mf.class_dropout) <= 0):
    raise UserError("Classifier-free guidance (meanflow.cfg_omega != 1 or cfg_kappa != 0) needs "
                    "a class-conditional network that also learns 'no class': set "
                    "model.class_conditional=True, model.null_class=True and "
                    "meanflow.class_dropout > 0 (the paper: 0.1).")
  return MeanFlow(net=net, p_mean=float(mf.p_mean), p_std=float(mf.p_std),
                  ratio_r_neq_t=float(mf.ratio_r_neq_t), norm_p=float(mf.norm_p),
                  norm_c=float(mf.norm_c), time_scale=float(mf.time_scale),
                  cfg_omega=float(mf.cfg_omega), cfg_kappa=float(mf.cfg_kappa),
                  class_dropout=float(mf.class_dropout),
                  num_classes=int(config.data.num_classes))
