"""The model factory: every network is `apply(params, x_in, c_noise, labels, train, rng) -> F`."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm_jax.models import tiny

NAMES = ("tiny",)


def create_model(model_config, data_config) -> nn.Module:
  mc = model_config
  num_classes = int(data_config.num_classes) if mc.class_conditional else 0
  if mc.name == "tiny":
    return tiny.TinyUNet(
        out_channels=int(data_config.channels), channels=int(mc.channels),
        channel_mult=tuple(mc.channel_mult), num_res_blocks=int(mc.num_res_blocks),
        patch_size=int(mc.patch_size), attn_resolutions=tuple(mc.attn_resolutions),
        dropout=float(mc.dropout), fourier_scale=float(mc.fourier_scale),
        emb_dim=int(mc.emb_dim), num_classes=num_classes)
  raise ValueError(f"Unknown model {mc.name!r}; this version has {', '.join(NAMES)}.")


def sample_shape(data_config) -> tuple[int, int, int]:
  r = int(data_config.resolution)
  return (r, r, int(data_config.channels))


def init_params(module: nn.Module, rng, data_config):
  x = jnp.zeros((1,) + sample_shape(data_config), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)
  return module.init({"params": rng}, x, jnp.zeros((1,)), labels, train=False)["params"]


def make_net(module: nn.Module) -> Callable:
  """Binds a Flax module into the pure network function the methods call."""
  def net(params, x_in, noise, labels, train: bool, rng):
    rngs = {"dropout": rng} if (train and rng is not None) else {}
    return module.apply({"params": params}, x_in, noise, labels, train=train, rngs=rngs)
  return net
