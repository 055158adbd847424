"""The EDM denoiser (docs/maths.md §1): the diffusion teacher of CD, the network ECT (and CT,
given one) starts from.

D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)) is trained by denoising score matching
with ln s ~ N(P_mean, P_std^2) and the weight (s^2 + sd^2) / (s sd)^2, which makes the effective
target of F unit-variance at every s. Same interface as ConsistencyTraining, no target network.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from cm_jax import distances, karras
from cm_jax.errors import UserError
from cm_jax.methods import consistency
from cm_jax.methods.contract import NoTargetNetwork


@dataclasses.dataclass(frozen=True)
class EDMTraining(NoTargetNetwork):
  net: consistency.Net
  levels: karras.NoiseLevels
  p_mean: float = -1.2
  p_std: float = 1.2

  uses_teacher = False

  def denoise(self, params, x, sigma, labels, train: bool, rng):
    net = lambda x_in, noise: self.net(params, x_in, noise, labels, train, rng)
    return karras.denoiser(net, x, sigma, self.levels)

  def loss(self, params, target_params, batch, rng, step, frozen=None):
    del target_params, step, frozen
    x, labels = batch["image"], batch.get("label")
    rng_sigma, rng_noise, rng_dropout = jax.random.split(rng, 3)
    sigma = jnp.exp(self.p_mean + self.p_std * jax.random.normal(rng_sigma, x.shape[:1]))  # [B]
    z = jax.random.normal(rng_noise, x.shape, x.dtype)
    denoised = self.denoise(params, x + karras.per_sample(sigma, x) * z, sigma, labels, True,
                            rng_dropout)
    sd = self.levels.sigma_data
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    mse = distances.l2(denoised, x)  # [B], mean over elements
    return jnp.mean(weight * mse), {"mse": jnp.mean(mse)}


def create(config, net: consistency.Net, sample_shape) -> EDMTraining:
  del sample_shape
  ec = config.edm
  if float(ec.p_std) <= 0:
    raise UserError(f"edm.p_std must be positive, got {ec.p_std}.")
  return EDMTraining(net=net, levels=karras.NoiseLevels.from_config(config.karras),
                     p_mean=float(ec.p_mean), p_std=float(ec.p_std))
