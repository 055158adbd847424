"""A Hugging Face diffusers `UNet2DModel` folder (the `openai/diffusers-*` hub repos) -> the
state dict of the CM PyTorch release (guided-diffusion's key names), which adm_release then
places into cm_jax's ADMUNet.

The CM conversions are ADM UNets written in diffusers' blocks: `ResnetDownsampleBlock2D` /
`AttnDownBlock2D` down, `AttnUpBlock2D` / `ResnetUpsampleBlock2D` up, residual blocks that
resample (`downsample_type=upsample_type="resnet"`), `UNetMidBlock2D` with attention, sinusoidal
time features as ADM's (`flip_sin_to_cos`, no frequency shift). Any other block type or option
is refused by name rather than converted approximately.

Renaming, not reshaping, except attention: diffusers' separate q, k, v and output Linear layers
are ADM's Conv1d `qkv` (q rows, then k, then v; within each, heads one after another, which is
the release's layout) and `proj_out`, each with a trailing kernel axis of 1.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from cm_jax.convert.torch_weights import LayoutError, load_torch_file
from cm_jax.errors import MissingDependency, MissingPath

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_HOW = ("download the whole hub repo first, e.g. `huggingface-cli download "
        "openai/diffusers-cd_imagenet64_l2 --local-dir DIR`, and give --src=DIR")
_DOWN = {"ResnetDownsampleBlock2D": False, "AttnDownBlock2D": True}
_UP = {"ResnetUpsampleBlock2D": False, "AttnUpBlock2D": True}
# config key -> the value every CM conversion has (None: key absent is fine too).
_FIXED = {"time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
          "center_input_sample": False, "act_fn": "silu", "class_embed_type": None,
          "mid_block_type": "UNetMidBlock2D", "add_attention": True,
          "downsample_type": "resnet", "upsample_type": "resnet"}
_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
        "class_embedding": "label_emb", "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0", "conv_out": "out.2"}
_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_MODULE = re.compile(r"^((?:down_blocks|up_blocks)\.\d+\.(?:resnets|attentions|downsamplers|"
                     r"upsamplers)\.\d+|mid_block\.(?:resnets|attentions)\.\d+)\.(.+)$")


def unet_folder(path: str) -> str:
  """PATH/unet (a whole pipeline repo) or PATH itself (its unet/ folder)."""
  if not os.path.exists(path):
    raise MissingPath(f"{path} does not exist; {_HOW}.")
  if not os.path.isdir(path):
    raise LayoutError(f"{path} is a file, not a diffusers folder; {_HOW}.")
  for candidate in (os.path.join(path, "unet"), path):
    if os.path.isfile(os.path.join(candidate, CONFIG_FILE)) and any(
        os.path.isfile(os.path.join(candidate, w)) for w in WEIGHT_FILES):
      return candidate
  if os.path.isdir(os.path.join(path, "unet")):
    raise LayoutError(f"{path}/unet holds no {CONFIG_FILE} with {' or '.join(WEIGHT_FILES)}; "
                      f"the download is incomplete: {_HOW}.")
  raise LayoutError(f"{path} has no unet/ folder (nor a {CONFIG_FILE} with the UNet's weights); "
                    f"{_HOW}.")


def read_config(folder: str, what: str) -> dict:
  path = os.path.join(folder, CONFIG_FILE)
  try:
    with open(path) as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise LayoutError(f"{what}: {path} is not readable JSON ({e}); {_HOW}.") from None
  if not isinstance(cfg, dict) or cfg.get("_class_name") != "UNet2DModel":
    name = cfg.get("_class_name") if isinstance(cfg, dict) else type(cfg).__name__
    raise LayoutError(f"{what}: {path} describes a {name}, not the UNet2DModel of the CM "
                      "releases (openai/diffusers-cd_*, -ct_*, -edm_*).")
  return cfg


def _read_weights(folder: str, what: str) -> dict[str, np.ndarray]:
  st = os.path.join(folder, WEIGHT_FILES[0])
  if os.path.isfile(st):
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise MissingDependency("Reading .safetensors needs the safetensors package: "
                        "pip install 'cm_jax[torch]'.") from None
    try:
      raw = load_file(st)
    except Exception as e:  # truncated or not a safetensors file; also bfloat16 (no numpy type)
      raise LayoutError(f"{what}: {st} is not a readable float safetensors file "
                        f"({type(e).__name__}: {e}); download it again ({_HOW}).") from None
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}
  return load_torch_file(os.path.join(folder, WEIGHT_FILES[1]))


def _check_config(cfg: dict, what: str) -> None:
  wrong = [f"{k}={cfg[k]!r} (the CM conversions have {v!r})" for k, v in _FIXED.items()
           if k in cfg and cfg[k] != v]
  for key, known in (("down_block_types", _DOWN), ("up_block_types", _UP)):
    unknown = [b for b in cfg.get(key, ()) if b not in known]
    if unknown:
      wrong.append(f"{key} {unknown} (the CM conversions use {list(known)})")
  if int(cfg.get("out_channels", 3)) != int(cfg.get("in_channels", 3)):
    wrong.append(f"out_channels={cfg.get('out_channels')} for in_channels="
                 f"{cfg.get('in_channels')} (a learned-variance output, never released)")
  if wrong:
    raise LayoutError(f"{what}: not a UNet of the CM releases: {'; '.join(wrong)}.")


def _module_map(cfg: dict) -> dict[str, str]:
  """diffusers module prefix -> the release's, for this UNet's block layout."""
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  per = int(cfg["layers_per_block"])
  if len(up) != len(down):
    raise LayoutError(f"{len(down)} down blocks but {len(up)} up blocks: not an ADM UNet.")
  out = {}
  block = 1
  for i, kind in enumerate(down):
    for j in range(per):
      out[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{block}.0"
      if _DOWN[kind]:
        out[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{block}.1"
      block += 1
    if i != len(down) - 1:
      out[f"down_blocks.{i}.downsamplers.0"] = f"input_blocks.{block}.0"
      block += 1
  out.update({"mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
              "mid_block.resnets.1": "middle_block.2"})
  block = 0
  for i, kind in enumerate(up):
    for j in range(per + 1):
      out[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{block}.0"
      if _UP[kind]:
        out[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{block}.1"
      if j == per and i != len(up) - 1:
        out[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{block}.{2 if _UP[kind] else 1}"
      block += 1
  return out


def diffusers_to_openai(state: dict[str, np.ndarray], cfg: dict, what: str
                        ) -> dict[str, np.ndarray]:
  """diffusers UNet2DModel keys -> the release's (guided-diffusion) keys and shapes."""
  _check_config(cfg, what)
  modules = _module_map(cfg)
  out: dict[str, np.ndarray] = {}
  attn: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    layer, _, attr = key.rpartition(".")
    if layer in _TOP:
      out[f"{_TOP[layer]}.{attr}"] = value
      continue
    m = _MODULE.match(layer)
    if m is None or m.group(1) not in modules:
      raise LayoutError(f"{what}: tensor {key} has no place in the CM UNet this config "
                        "describes (is the folder complete and of a CM release?).")
    prefix, sub = modules[m.group(1)], m.group(2)
    if ".attentions." in m.group(1):
      attn.setdefault(prefix, {})[f"{sub}.{attr}"] = value
    elif sub in _RES:
      out[f"{prefix}.{_RES[sub]}.{attr}"] = value
    else:
      raise LayoutError(f"{what}: {key} is not a part of a residual block ({', '.join(_RES)}).")
  for prefix, parts in attn.items():
    need = [f"{n}.{a}" for n in ("group_norm", "to_q", "to_k", "to_v", "to_out.0")
            for a in ("weight", "bias")]
    missing = [n for n in need if n not in parts]
    extra = sorted(set(parts) - set(need))
    if missing or extra:
      raise LayoutError(f"{what}: the attention at {prefix} has "
                        f"{'no ' + ', '.join(missing) if missing else ''}"
                        f"{' and ' if missing and extra else ''}"
                        f"{'unexpected ' + ', '.join(extra) if extra else ''}.")
    out[f"{prefix}.norm.weight"] = parts["group_norm.weight"]
    out[f"{prefix}.norm.bias"] = parts["group_norm.bias"]
    out[f"{prefix}.qkv.weight"] = np.concatenate(
        [parts[f"to_{n}.weight"] for n in "qkv"], axis=0)[:, :, None]
    out[f"{prefix}.qkv.bias"] = np.concatenate([parts[f"to_{n}.bias"] for n in "qkv"])
    out[f"{prefix}.proj_out.weight"] = parts["to_out.0.weight"][:, :, None]
    out[f"{prefix}.proj_out.bias"] = parts["to_out.0.bias"]
  return out


def read_unet_dir(path: str, what: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(the UNet's weights under the release's key names, float32; its config.json)."""
  folder = unet_folder(path)
  cfg = read_config(folder, what)
  state = _read_weights(folder, what)
  return diffusers_to_openai(state, cfg, what), cfg
