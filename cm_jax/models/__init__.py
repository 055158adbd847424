"""The model factory: every network is `apply(params, x_in, c_noise, labels, train, rng) -> F`.

Networks (config.model.name):
  tiny    the digits default: a patchify stem, then a small UNet (attn_resolutions in units of
          the working grid after the stem)
  ncsnpp  NCSN++, the CIFAR-10 network of CM / iCT (attn_resolutions in pixels)
  adm     the ADM UNet of guided-diffusion, ImageNet 64 / LSUN 256 (attn_resolutions in pixels)

`model.time_inputs=2` gives the network two time inputs (c_noise [B, 2], MeanFlow's (t, t - r)),
each with its own embedding; `model.null_class` adds a 'no class' label (index num_classes) for
classifier-free guidance training.

`model.dtype` picks the compute dtype (float32 | bfloat16); parameters are float32 either way, so
the optimizer state and the EMAs are float32, and F is returned as float32.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cm_jax.errors import UserError
from cm_jax.models import layers, ncsnpp, tiny, unet

NAMES = ("tiny", "ncsnpp", "adm")


def _check_common(mc, data_config) -> None:
  if len(tuple(mc.channel_mult)) < 1 or int(mc.num_res_blocks) < 1 or int(mc.channels) < 1:
    raise UserError("model.channels, model.channel_mult and model.num_res_blocks must be "
                    "positive (at least one level of at least one block).")
  if mc.class_conditional and int(data_config.num_classes) < 1:
    raise UserError(f"model.class_conditional=True but data {data_config.name!r} has no labels "
                    "(data.num_classes=0); set model.class_conditional=False.")
  if not 0.0 <= float(mc.dropout) < 1.0:
    raise UserError(f"model.dropout must lie in [0, 1), got {mc.dropout}.")


def create_model(model_config, data_config) -> nn.Module:
  mc = model_config
  if mc.name not in NAMES:
    raise UserError(f"Unknown model {mc.name!r}; this version has {', '.join(NAMES)}.")
  _check_common(mc, data_config)
  dtype = layers.compute_dtype(str(mc.get("dtype", "float32")))
  num_classes = int(data_config.num_classes) if mc.class_conditional else 0
  time_inputs = int(mc.get("time_inputs", 1))
  if time_inputs not in (1, 2):
    raise UserError(f"model.time_inputs must be 1 (a noise level or time) or 2 (MeanFlow's "
                    f"(t, t - r)), got {time_inputs}.")
  if mc.get("null_class", False):
    if not num_classes:
      raise UserError("model.null_class=True adds a 'no class' label for classifier-free "
                      "guidance: it needs model.class_conditional=True on labelled data.")
    num_classes += 1  # label num_classes = no class
  remat = layers.check_remat(str(mc.get("remat", "none")))
  out_channels = int(data_config.channels)
  if mc.name == "tiny":
    if remat != "none":
      raise UserError("model.remat applies to the paper networks (ncsnpp, adm); the tiny "
                      "network has no remat: set model.remat=none.")
    return tiny.TinyUNet(
        out_channels=out_channels, channels=int(mc.channels),
        channel_mult=tuple(mc.channel_mult), num_res_blocks=int(mc.num_res_blocks),
        patch_size=int(mc.patch_size), attn_resolutions=tuple(mc.attn_resolutions),
        dropout=float(mc.dropout), fourier_scale=float(mc.fourier_scale),
        emb_dim=int(mc.emb_dim), num_classes=num_classes, time_inputs=time_inputs,
        dtype=None if dtype == jnp.float32 else dtype)
  common = dict(out_channels=out_channels, channels=int(mc.channels),
                channel_mult=tuple(int(m) for m in mc.channel_mult),
                num_res_blocks=int(mc.num_res_blocks),
                attn_resolutions=tuple(int(r) for r in mc.attn_resolutions),
                dropout=float(mc.dropout), num_classes=num_classes, time_inputs=time_inputs,
                dtype=dtype, remat=remat)
  size = int(data_config.resolution)
  ncsnpp.check_resolutions(mc.name, (size, size), len(common["channel_mult"]),
                           common["attn_resolutions"])
  if mc.name == "ncsnpp":
    return ncsnpp.NCSNpp(fourier_scale=float(mc.fourier_scale), **common)
  head = int(mc.num_head_channels)
  widths = sorted({int(mc.channels) * m for m in common["channel_mult"]})
  if head < 1 or any(w % head for w in widths):
    raise UserError(f"model.num_head_channels={head} must divide every level's width "
                    f"{widths}.")
  return unet.ADMUNet(num_head_channels=head,
                      use_scale_shift_norm=bool(mc.use_scale_shift_norm),
                      resblock_updown=bool(mc.resblock_updown), **common)


def sample_shape(data_config) -> tuple[int, int, int]:
  r = int(data_config.resolution)
  return (r, r, int(data_config.channels))


def init_params(module: nn.Module, rng, data_config):
  x = jnp.zeros((1,) + sample_shape(data_config), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)
  k = int(getattr(module, "time_inputs", 1))
  noise = jnp.zeros((1,) if k == 1 else (1, k))
  return module.init({"params": rng}, x, noise, labels, train=False)["params"]


def num_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def make_net(module: nn.Module) -> Callable:
  """Binds a Flax module into the pure network function the methods call (F in float32)."""
  def net(params, x_in, noise, labels, train: bool, rng):
    rngs = {"dropout": rng} if (train and rng is not None) else {}
    out = module.apply({"params": params}, x_in, noise, labels, train=train, rngs=rngs)
    return out.astype(jnp.float32)
  return net
