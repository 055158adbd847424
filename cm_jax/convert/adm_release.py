"""State dicts of the CM PyTorch release (guided-diffusion's ADM `UNetModel`) -> cm_jax ADMUNet
parameters.

The network is read off the tensors, never the file name: the stem gives the channels, `out.2`
the output channels (6 would be learn_sigma, which the release never used), `label_emb` the
classes, `emb_layers.1` whether the time embedding is applied FiLM-style (scale-shift: twice the
block's channels), the decoder's up-sampling blocks the blocks per level, the decoder's channels
the multipliers and the encoder's attention blocks the attention levels. The module list that
architecture implies must be exactly the file's, so a file of another layout fails by name.

Modules are numbered in the order the release runs them (input_blocks, middle_block,
output_blocks), which is the order Flax numbers cm_jax's ADMResBlock_i and MultiHeadAttention_i.
Attention: the release's qkv projection is a Conv1d whose 3C outputs are all-q, all-k, all-v,
each grouped by head (the flash layout, "(three h d)"), which is cm_jax's default `split` layout:
the weights move over unchanged, only transposed. The number of heads is not in the tensors; the
release uses heads of 64 channels (`num_head_channels`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax.convert.torch_weights import LayoutError
from cm_jax.models import unet

_BLOCK = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)(?:\.(\d+))?\.")
_SECTIONS = ("input_blocks", "middle_block", "output_blocks")
_TOP = {"time_embed.0": "Dense_0", "time_embed.2": "Dense_1", "label_emb": "Embed_0",
        "out.0": "GroupNorm_0", "out.2": "Conv_1"}
_RES = {"in_layers.0": "GroupNorm_0", "in_layers.2": "Conv_0", "emb_layers.1": "Dense_0",
        "out_layers.0": "GroupNorm_1", "out_layers.3": "Conv_1", "skip_connection": "Conv_2"}
_ATTN = {"norm": "GroupNorm_0", "qkv": "qkv", "proj_out": "proj_out"}


@dataclasses.dataclass(frozen=True)
class ADMArchitecture:
  in_channels: int
  out_channels: int
  channels: int
  channel_mult: tuple
  num_res_blocks: int
  attention_levels: tuple          # level indices (0 = full resolution) with attention
  use_scale_shift_norm: bool
  resblock_updown: bool
  num_classes: int                 # 0: unconditional
  num_tensors: int
  num_params: int

  def attn_resolutions(self, resolution: int) -> tuple:
    """The attention levels as cm_jax's feature-map sides, in pixels, for this image size."""
    return tuple(resolution // 2 ** level for level in self.attention_levels)

  def module_list(self) -> list[tuple[str, str]]:
    """(module prefix, 'res' | 'attn' | 'stem') in the release's order, as guided-diffusion
    builds that architecture (with resblock_updown)."""
    mods = [("input_blocks.0.0", "stem")]
    block = 1
    levels = len(self.channel_mult)
    for level in range(levels):
      for _ in range(self.num_res_blocks):
        mods.append((f"input_blocks.{block}.0", "res"))
        if level in self.attention_levels:
          mods.append((f"input_blocks.{block}.1", "attn"))
        block += 1
      if level != levels - 1:
        mods.append((f"input_blocks.{block}.0", "res"))
        block += 1
    mods += [("middle_block.0", "res"), ("middle_block.1", "attn"), ("middle_block.2", "res")]
    block = 0
    for level in reversed(range(levels)):
      for i in range(self.num_res_blocks + 1):
        mods.append((f"output_blocks.{block}.0", "res"))
        sub = 1
        if level in self.attention_levels:
          mods.append((f"output_blocks.{block}.{sub}", "attn"))
          sub += 1
        if level and i == self.num_res_blocks:
          mods.append((f"output_blocks.{block}.{sub}", "res"))
        block += 1
    return mods


def _modules(state: dict) -> dict[str, str]:
  """The file's blocks: prefix -> 'res' | 'attn' | 'stem' | 'downsample' | 'upsample' | '?'."""
  found: dict[str, set] = {}
  for key in state:
    m = _BLOCK.match(key)
    if not m:
      continue
    prefix = m.group(0)[:-1]
    found.setdefault(prefix, set()).add(key[len(prefix) + 1:])
  kinds = {}
  for prefix, rest in found.items():
    if prefix == "input_blocks.0.0":
      kinds[prefix] = "stem"
    elif "in_layers.2.weight" in rest:
      kinds[prefix] = "res"
    elif "qkv.weight" in rest:
      kinds[prefix] = "attn"
    elif "op.weight" in rest:
      kinds[prefix] = "downsample"
    elif "conv.weight" in rest:
      kinds[prefix] = "upsample"
    else:
      kinds[prefix] = "?"
  return kinds


def _order(prefix: str) -> tuple:
  parts = prefix.split(".")
  return (_SECTIONS.index(parts[0]),) + tuple(int(p) for p in parts[1:])


def _shape(state: dict, key: str, what: str) -> tuple:
  if key not in state:
    raise LayoutError(f"{what}: no tensor {key}; this is not a state dict of the CM release's "
                      "ADM UNet.")
  return tuple(state[key].shape)


def infer_architecture(state: dict, what: str) -> ADMArchitecture:
  """The ADM UNet the state dict describes; a LayoutError naming what does not fit."""
  if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
    some = ", ".join(sorted(state)[:4])
    raise LayoutError(f"{what} is not an ADM UNet state dict (guided-diffusion / CM release "
                      f"layout: input_blocks.*, middle_block.*, output_blocks.*, out.*); its keys "
                      f"start {some}. Give one of the release's .pt files.")
  channels, in_channels = _shape(state, "input_blocks.0.0.weight", what)[:2]
  out_channels = _shape(state, "out.2.weight", what)[0]
  if out_channels == 2 * in_channels:
    raise LayoutError(f"{what}: the network outputs {out_channels} channels for "
                      f"{in_channels}-channel images, i.e. learn_sigma (a variance head), which "
                      "the consistency-model release never used and cm_jax does not model.")
  kinds = _modules(state)
  odd = {k: v for k, v in kinds.items() if v in ("downsample", "upsample", "?")}
  if any(v in ("downsample", "upsample") for v in odd.values()):
    shown = ", ".join(sorted(odd)[:3])
    raise LayoutError(f"{what}: resampling by plain convolutions ({shown}), i.e. "
                      "resblock_updown off; the release resamples in residual blocks "
                      "(resblock_updown=True), the only layout this importer reads.")
  if odd:
    raise LayoutError(f"{what}: blocks of no ADM kind ({', '.join(sorted(odd)[:3])}); not the "
                      "CM release's UNet.")
  outputs = sorted({int(p.split(".")[1]) for p in kinds if p.startswith("output_blocks.")})
  if not outputs or outputs != list(range(len(outputs))):
    raise LayoutError(f"{what}: output_blocks are missing or not numbered 0..N.")
  # The first decoder block that ends in an up-sampling residual block closes the lowest level.
  up_at = [b for b in outputs
           if any(kinds[p] == "res" and p.startswith(f"output_blocks.{b}.") and p[-1] != "0"
                  for p in kinds)]
  num_res_blocks = (up_at[0] if up_at else len(outputs) - 1)
  levels, rest = divmod(len(outputs), num_res_blocks + 1)
  if rest or num_res_blocks < 1:
    raise LayoutError(f"{what}: {len(outputs)} decoder blocks do not split into levels of "
                      f"{num_res_blocks + 1}; not the ADM layout.")
  mult = []
  for level in range(levels):
    first = (levels - 1 - level) * (num_res_blocks + 1)
    width = _shape(state, f"output_blocks.{first}.0.out_layers.3.weight", what)[0]
    if width % channels:
      raise LayoutError(f"{what}: level {level} has {width} channels, not a multiple of the "
                        f"stem's {channels}.")
    mult.append(width // channels)
  attention = []
  for level in range(levels):
    first = 1 + level * (num_res_blocks + 1)
    if kinds.get(f"input_blocks.{first}.1") == "attn":
      attention.append(level)
  emb_out, emb_in = _shape(state, "input_blocks.1.0.emb_layers.1.weight", what)
  first_width = _shape(state, "input_blocks.1.0.out_layers.3.weight", what)[0]
  arch = ADMArchitecture(
      in_channels=int(in_channels), out_channels=int(out_channels), channels=int(channels),
      channel_mult=tuple(mult), num_res_blocks=int(num_res_blocks),
      attention_levels=tuple(attention), use_scale_shift_norm=emb_out == 2 * first_width,
      resblock_updown=True,
      num_classes=int(state["label_emb.weight"].shape[0]) if "label_emb.weight" in state else 0,
      num_tensors=len(state), num_params=int(sum(int(np.size(v)) for v in state.values())))
  want = dict(arch.module_list())
  if want != kinds:
    missing = sorted(set(want) - set(kinds), key=_order)
    extra = sorted(set(kinds) - set(want), key=_order)
    differ = sorted((p for p in set(want) & set(kinds) if want[p] != kinds[p]), key=_order)
    raise LayoutError(
        f"{what}: the blocks are not those of an ADM UNet with {channels} channels x "
        f"{tuple(mult)} and {num_res_blocks} blocks per level (missing {missing[:3]}, "
        f"unexpected {extra[:3]}, of another kind {differ[:3]}).")
  return arch


def adm_module(arch: ADMArchitecture, *, num_head_channels: int = 64, resolution: int = 0,
               dtype=jnp.float32) -> unet.ADMUNet:
  """cm_jax's ADMUNet of this architecture for images of `resolution` pixels (0: a nominal
  size, enough for parameter shapes, which do not depend on the image size)."""
  return unet.ADMUNet(
      out_channels=arch.out_channels, channels=arch.channels, channel_mult=arch.channel_mult,
      num_res_blocks=arch.num_res_blocks,
      attn_resolutions=arch.attn_resolutions(resolution or _nominal_resolution(arch)),
      num_head_channels=num_head_channels, use_scale_shift_norm=arch.use_scale_shift_norm,
      resblock_updown=arch.resblock_updown, num_classes=arch.num_classes, dtype=dtype)


def _nominal_resolution(arch: ADMArchitecture) -> int:
  return 4 * 2 ** (len(arch.channel_mult) - 1)


def param_template(arch: ADMArchitecture, num_head_channels: int = 64) -> Any:
  """The shapes of cm_jax's parameters for this architecture (nothing allocated)."""
  module = adm_module(arch, num_head_channels=num_head_channels)
  side = _nominal_resolution(arch)
  x = jnp.zeros((1, side, side, arch.in_channels))
  labels = jnp.zeros((1,), jnp.int32) if arch.num_classes else None
  return jax.eval_shape(lambda: module.init({"params": jax.random.PRNGKey(0)}, x,
                                            jnp.zeros((1,)), labels)["params"])


def _convert(kind: str, attr: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
  """(Flax leaf name, value) of one torch tensor of a layer of `kind`."""
  if kind == "norm":
    return ("scale" if attr == "weight" else "bias"), arr
  if kind == "embed":
    return "embedding", arr
  if attr == "bias":
    return "bias", arr
  if arr.ndim == 4:                      # Conv2d OIHW -> HWIO
    return "kernel", arr.transpose(2, 3, 1, 0)
  if arr.ndim == 3:                      # Conv1d [out, in, 1] -> Dense [in, out]
    return "kernel", arr[:, :, 0].T
  return "kernel", arr.T                 # Linear [out, in] -> [in, out]


def _layer_kind(torch_name: str) -> str:
  if torch_name in ("in_layers.0", "out_layers.0", "norm", "out.0"):
    return "norm"
  return "embed" if torch_name == "label_emb" else "linear"


def params_from_state_dict(state: dict, arch: ADMArchitecture, *, num_head_channels: int = 64,
                           what: str = "state dict") -> tuple[Any, dict]:
  """(cm_jax ADMUNet params, report {tensors, parameters, mapping [(file key, cm_jax path)]}).
  Every tensor is used exactly once and every shape checked against the network."""
  kinds = dict(arch.module_list())
  counters = {"res": 0, "attn": 0}
  module_name = {}
  for prefix in sorted(kinds, key=_order):
    kind = kinds[prefix]
    if kind == "stem":
      module_name[prefix] = ("Conv_0", {"": ""})
    else:
      base = "ADMResBlock" if kind == "res" else "MultiHeadAttention"
      module_name[prefix] = (f"{base}_{counters[kind]}", _RES if kind == "res" else _ATTN)
      counters[kind] += 1
  values, mapping = {}, []
  for key, arr in state.items():
    layer, _, attr = key.rpartition(".")
    m = _BLOCK.match(key)
    if m:
      prefix = m.group(0)[:-1]
      sub = layer[len(prefix) + 1:]
      if prefix not in module_name:
        raise LayoutError(f"{what}: {key} belongs to no block of the network.")
      module, names = module_name[prefix]
      if sub not in names:
        raise LayoutError(f"{what}: unknown tensor {key} in an ADM block.")
      dst_layer = f"{module}/{names[sub]}" if names[sub] else module
      kind = _layer_kind(sub)
    elif layer in _TOP:
      dst_layer, kind = _TOP[layer], _layer_kind(layer)
    else:
      raise LayoutError(f"{what}: unknown tensor {key}; not the CM release's ADM UNet.")
    leaf, value = _convert(kind, attr, np.asarray(arr, np.float32))
    dst = f"{dst_layer}/{leaf}"
    if dst in values:
      raise LayoutError(f"{what}: two tensors map to {dst} (the second: {key}).")
    values[dst] = value
    mapping.append((key, dst))
  template = param_template(arch, num_head_channels)

  def leaf(path, want):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if key not in values:
      raise LayoutError(f"{what}: nothing in the file for cm_jax's {key}.")
    got = values.pop(key)
    if tuple(got.shape) != tuple(want.shape):
      raise LayoutError(f"{what}: {key} has shape {tuple(got.shape)} in the file, the network "
                        f"needs {tuple(want.shape)}.")
    return np.ascontiguousarray(got, np.float32)

  params = jax.tree_util.tree_map_with_path(leaf, template)
  if values:
    raise LayoutError(f"{what}: {len(values)} tensors have no place in the network "
                      f"({', '.join(sorted(values)[:3])}).")
  report = {"tensors": len(mapping), "mapping": mapping,
            "parameters": int(sum(int(np.size(v)) for v in jax.tree.leaves(params)))}
  return params, report


def state_dict_from_params(params: Any, arch: ADMArchitecture) -> dict[str, np.ndarray]:
  """The inverse: cm_jax ADMUNet params -> the release's key names and torch layouts."""
  flat = {"/".join(str(getattr(p, "key", p)) for p in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  out, inverse = {}, {}
  kinds = dict(arch.module_list())
  counters = {"res": 0, "attn": 0}
  for prefix in sorted(kinds, key=_order):
    kind = kinds[prefix]
    if kind == "stem":
      inverse["Conv_0"] = (prefix, {"": ""})
      continue
    base = "ADMResBlock" if kind == "res" else "MultiHeadAttention"
    inverse[f"{base}_{counters[kind]}"] = (prefix, _RES if kind == "res" else _ATTN)
    counters[kind] += 1
  top = {v: k for k, v in _TOP.items()}
  for path, value in flat.items():
    *layer_parts, leaf = path.split("/")
    head = layer_parts[0]
    if head in inverse:
      prefix, names = inverse[head]
      sub_by_flax = {v: k for k, v in names.items()}
      sub = sub_by_flax["/".join(layer_parts[1:])]
      torch_layer = f"{prefix}.{sub}" if sub else prefix
      kind = _layer_kind(sub)
    else:
      torch_layer = top["/".join(layer_parts)]
      kind = _layer_kind(torch_layer)
    attr = "bias" if leaf == "bias" else "weight"
    if kind in ("norm", "embed") or leaf == "bias":
      arr = value
    elif value.ndim == 4:
      arr = value.transpose(3, 2, 0, 1)
    elif _is_conv1d(torch_layer):
      arr = value.T[:, :, None]
    else:
      arr = value.T
    out[f"{torch_layer}.{attr}"] = np.ascontiguousarray(arr, np.float32)
  return out


def _is_conv1d(torch_layer: str) -> bool:
  """The release's attention projections are Conv1d layers ([out, in, 1] weights)."""
  return torch_layer.rsplit(".", 1)[-1] in ("qkv", "proj_out")
