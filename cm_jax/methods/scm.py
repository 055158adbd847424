"""Continuous-time consistency models (sCM, docs/maths.md §7; Lu & Song 2025) and their TrigFlow
teacher.

Three methods on the TrigFlow parameterisation of cm_jax/trigflow.py, all with t = arctan(exp(tau) /
sd), tau ~ N(P_mean, P_std^2), x_t = cos(t) x0 + sin(t) z, z ~ N(0, sd^2 I):

- `trigflow`: the diffusion model (the sCD teacher). Velocity matching,
  exp(w(t)) / D ||F_theta(x_t / sd, t) - (cos(t) z - sin(t) x0) / sd||^2 - w(t).
- `sct` / `scd`: the continuous-time consistency loss
  exp(w(t)) / D ||F_theta - F_theta^- - g||^2 - w(t), F_theta^- = stopgrad(F_theta) (same dropout),
  g = -cos^2(t) (sd F^- - dx_t/dt) - r cos(t) sin(t) (x_t + sd dF^-/dt), normalised per sample
  g <- g / (||g|| + c), with r = min(1, step / warmup) the tangent warm-up and dx_t/dt
  = cos(t) z - sin(t) x0 (sCT) or sd F_teacher(x_t / sd, t) (sCD, the teacher's EMA in eval mode).
  cos(t) sin(t) dF^-/dt comes from one forward-mode `jax.jvp` through the whole network (attention
  included) along the tangent cos(t) sin(t) (dx_t/dt, 1) of (x_t, t).

w(t) is the adaptive weighting head: a small MLP on a fixed Fourier embedding of t, trained jointly
with the network. Its weights live in the parameters under `adaptive_weight` (the network ignores
that entry), so the optimizer, the EMA and the checkpoints carry it. Minimising over w makes
exp(-w(t)) the expected loss at t: the head learns the loss's scale and divides it out.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import karras, trigflow
from cm_jax.errors import UserError
from cm_jax.methods import consistency
from cm_jax.methods.contract import NoTargetNetwork

HEAD = "adaptive_weight"  # the params entry of the weighting head


@dataclasses.dataclass(frozen=True)
class WeightHead:
  """w(t): Fourier features cos(2 pi (f t + phase)) (f ~ N(0, 1), fixed) -> Dense -> swish ->
  Dense -> scalar; the last layer starts at zero, so w = 0 (an unweighted loss) at step 0."""
  hidden: int = 64

  def _features(self, t):  # [B] -> [B, hidden]
    rs = np.random.RandomState(0)
    freqs = rs.randn(self.hidden).astype(np.float32)
    phases = rs.rand(self.hidden).astype(np.float32)
    return math.sqrt(2.0) * jnp.cos(2 * math.pi * (t[:, None] * freqs[None] + phases[None]))

  def init(self, rng) -> dict:
    n = self.hidden
    return {"dense1": {"kernel": jax.random.normal(rng, (n, n)) / math.sqrt(n),
                       "bias": jnp.zeros((n,))},
            "dense2": {"kernel": jnp.zeros((n, 1)), "bias": jnp.zeros((1,))}}

  def __call__(self, params, t):  # t [B] -> w [B]
    h = jax.nn.swish(self._features(t) @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return (h @ params["dense2"]["kernel"] + params["dense2"]["bias"])[:, 0]


@dataclasses.dataclass(frozen=True)
class TrigFlowBase(NoTargetNetwork):
  """What the three methods share: the network in TrigFlow time, t sampling, the weighting."""
  net: consistency.Net
  sigma_data: float = 0.5
  time_scale: float = 1.0
  p_mean: float = -1.0
  p_std: float = 1.4
  head: Optional[WeightHead] = WeightHead()

  def velocity(self, params, x_t, t, labels, train: bool, rng):
    """F(x_t / sd, time_scale t) [B, H, W, C]; t [B]."""
    net = lambda x_in, noise: self.net(params, x_in, noise, labels, train, rng)
    return trigflow.bind(net, self.sigma_data, self.time_scale)(x_t, t)

  def extra_params(self, rng) -> dict:
    """Parameters besides the network's: the weighting head (Experiment adds them at init)."""
    return {} if self.head is None else {HEAD: self.head.init(rng)}

  def draw(self, rng, x):
    """(t [B], z [B, ...] ~ N(0, sd^2), x_t)."""
    rng_t, rng_z = jax.random.split(rng)
    tau = self.p_mean + self.p_std * jax.random.normal(rng_t, x.shape[:1])
    t = trigflow.time_from_tau(tau, self.sigma_data)
    z = self.sigma_data * jax.random.normal(rng_z, x.shape, x.dtype)
    x_t = karras.per_sample(jnp.cos(t), x) * x + karras.per_sample(jnp.sin(t), x) * z
    return t, z, x_t

  def weighted(self, params, t, mse):
    """exp(w(t)) mse - w(t), averaged over the batch; plain mse without a head."""
    if self.head is None:
      return jnp.mean(mse), {}
    w = self.head(params[HEAD], t)
    return jnp.mean(jnp.exp(w) * mse - w), {"weight_mean": jnp.mean(w)}


def _mse(a, b):
  """||a - b||^2 / D per sample: [B]."""
  return jnp.mean(jnp.square((a - b).reshape(a.shape[0], -1).astype(jnp.float32)), axis=1)


@dataclasses.dataclass(frozen=True)
class TrigFlowDiffusion(TrigFlowBase):
  """The TrigFlow diffusion model (velocity prediction): sampled by an ODE solver, the sCD teacher."""
  uses_teacher = False

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    del target_params, step, frozen
    x, labels = batch["image"], batch.get("label")
    rng_draw, rng_dropout = jax.random.split(rng)
    t, z, x_t = self.draw(rng_draw, x)
    ct_, st_ = karras.per_sample(jnp.cos(t), x), karras.per_sample(jnp.sin(t), x)
    target = (ct_ * z - st_ * x) / self.sigma_data
    mse = _mse(self.velocity(params, x_t, t, labels, True, rng_dropout), target)
    loss, aux = self.weighted(params, t, mse)
    return loss, {"mse": jnp.mean(mse), **aux}


@dataclasses.dataclass(frozen=True)
class ContinuousConsistency(TrigFlowBase):
  """sCT (distill=False) and sCD (distill=True: `frozen` holds the TrigFlow teacher's EMA)."""
  distill: bool = False
  warmup_steps: int = 10_000
  tangent_norm_c: float = 0.1   # < 0: no normalisation
  prior_weighting: bool = False  # sCM's prior weight 1 / (sigma_d tan t) on the squared error

  @property
  def uses_teacher(self) -> bool:
    return self.distill

  def warmup(self, step):
    """r = min(1, step / warmup_steps)."""
    if self.warmup_steps <= 0:
      return jnp.float32(1.0)
    return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / self.warmup_steps)

  def dxt_dt(self, x, z, t, x_t, labels, frozen):
    """sCT: cos(t) z - sin(t) x0; sCD: sd F_teacher(x_t / sd, t) (teacher in eval mode)."""
    if not self.distill:
      return karras.per_sample(jnp.cos(t), x) * z - karras.per_sample(jnp.sin(t), x) * x
    if frozen is None:
      raise UserError("sCD needs the TrigFlow teacher's parameters: pass them as `frozen`.")
    return self.sigma_data * self.velocity(frozen, x_t, t, labels, False, None).astype(x.dtype)

  def tangent(self, params, x_t, t, dxt_dt, labels, rng, step):
    """(F^- [B, ...], g [B, ...] before normalisation): one jvp through the whole network."""
    sd = self.sigma_data
    cs = jnp.cos(t) * jnp.sin(t)  # [B]
    fn = lambda x, tt: self.velocity(params, x, tt, labels, True, rng)
    f_minus, cs_df_dt = jax.jvp(fn, (x_t, t), (karras.per_sample(cs, x_t) * dxt_dt, cs))
    c2 = karras.per_sample(jnp.cos(t) ** 2, x_t)
    g = (-c2 * (sd * f_minus - dxt_dt)
         - self.warmup(step) * (karras.per_sample(cs, x_t) * x_t + sd * cs_df_dt))
    return f_minus, g

  def normalise(self, g):
    if self.tangent_norm_c < 0:
      return g
    norm = jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1))
    return g / karras.per_sample(norm + self.tangent_norm_c, g)

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    del target_params
    x, labels = batch["image"], batch.get("label")
    rng_draw, rng_dropout = jax.random.split(rng)
    t, z, x_t = self.draw(rng_draw, x)
    dxt_dt = jax.lax.stop_gradient(self.dxt_dt(x, z, t, x_t, labels, frozen))
    f_minus, g = self.tangent(jax.lax.stop_gradient(params), x_t, t, dxt_dt, labels, rng_dropout,
                              step)
    g_norm = jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1))
    target = jax.lax.stop_gradient(f_minus + self.normalise(g))
    # The same dropout key as the jvp pass: F_theta - F^- is zero in value, its gradient is F's.
    mse = _mse(self.velocity(params, x_t, t, labels, True, rng_dropout), target)
    # Prior weighting: small t, the low noise the consistency condition is anchored at, counts more.
    err = mse / (self.sigma_data * jnp.tan(t)) if self.prior_weighting else mse
    loss, aux = self.weighted(params, t, err)
    return loss, {"mse": jnp.mean(mse), "tangent_norm": jnp.mean(g_norm),
                  "warmup": self.warmup(step), **aux}

  def schedule(self, step) -> dict[str, float]:
    return {"warmup": float(self.warmup(step))}


def _common(config, net) -> dict:
  sc = config.scm
  if float(sc.p_std) <= 0:
    raise UserError(f"scm.p_std must be positive, got {sc.p_std}.")
  if float(sc.time_scale) <= 0:
    raise UserError(f"scm.time_scale must be positive (1 or 1000), got {sc.time_scale}.")
  if sc.adaptive_weight and int(sc.weight_hidden) < 1:
    raise UserError(f"scm.weight_hidden must be at least 1, got {sc.weight_hidden}.")
  return dict(net=net, sigma_data=float(config.karras.sigma_data),
              time_scale=float(sc.time_scale), p_mean=float(sc.p_mean), p_std=float(sc.p_std),
              head=WeightHead(int(sc.weight_hidden)) if sc.adaptive_weight else None)


def create_trigflow(config, net: consistency.Net, sample_shape) -> TrigFlowDiffusion:
  del sample_shape
  return TrigFlowDiffusion(**_common(config, net))


def _create_consistency(config, net, distill: bool) -> ContinuousConsistency:
  sc = config.scm
  return ContinuousConsistency(**_common(config, net), distill=distill,
                               warmup_steps=int(sc.warmup_steps),
                               tangent_norm_c=float(sc.tangent_norm_c),
                               prior_weighting=bool(sc.prior_weighting))


def create_sct(config, net: consistency.Net, sample_shape) -> ContinuousConsistency:
  del sample_shape
  return _create_consistency(config, net, distill=False)


def create_scd(config, net: consistency.Net, sample_shape) -> ContinuousConsistency:
  del sample_shape
  return _create_consistency(config, net, distill=True)
