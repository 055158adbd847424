"""The JAX CIFAR-10 release (openai/consistency_models_cifar10) -> cm_jax NCSN++ parameters.

Its files (`checkpoint_N` of a run, the single `edm_cifar10_ema`) are flax msgpack dumps of its
training `State`: step, lr, ema_rate, params, params_ema, model_state, opt_state, rng_state and,
for runs with a target network, target_params. They are read with
`flax.serialization.msgpack_restore`, which rebuilds plain dicts of arrays and runs no code.

The network is score_sde's NCSN++ in its Flax auto-names. cm_jax's NCSN++ creates its modules in
the same order, so index i of each kind is the same module; what differs:
  GaussianFourierProjection_i/W        -> FourierEmbedding_i/W
  ResnetBlockBigGANpp_i/...            -> BigGANResBlock_i/...        (same inner names)
  AttnBlockpp_i/GroupNorm_0            -> MultiHeadAttention_i/GroupNorm_0
  AttnBlockpp_i/NIN_0..2 {W [C, C], b} -> MultiHeadAttention_i/qkv {kernel [C, 3C] = q|k|v, bias}
  AttnBlockpp_i/NIN_3                  -> MultiHeadAttention_i/proj_out
  Downsample_i/Conv2d_0 {weight, bias} -> FIRConvDown_i/Conv_0 {kernel, bias}
  Dense_i, Conv_i, GroupNorm_i         -> unchanged
(one head over all C channels, so cm_jax's 'split' q|k|v layout is the three NIN layers side by
side). The release feeds the network c_in x and 0.25 ln(sigma), and applies the boundary
scalings with sigma_min: cm_jax's conventions for NCSN++, so nothing else changes.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

import numpy as np

from cm_jax.convert.torch_weights import LayoutError
from cm_jax.errors import MissingPath

_INDEXED = re.compile(r"^([A-Za-z0-9]+?)_(\d+)$")
_RENAME = {"GaussianFourierProjection": "FourierEmbedding", "ResnetBlockBigGANpp": "BigGANResBlock",
           "AttnBlockpp": "MultiHeadAttention", "Downsample": "FIRConvDown"}
_BACK = {v: k for k, v in _RENAME.items()}
_PLAIN = ("Dense", "Conv", "GroupNorm")
_RES_PARTS = {"GroupNorm_0", "Conv_0", "Dense_0", "GroupNorm_1", "Conv_1", "Conv_2"}
_HOW = ("give a `checkpoint_N` file of the release's runs (cd-lpips/checkpoints/checkpoint_80, "
        "...) or `edm_cifar10_ema`, as downloaded")


def read_state(path: str, what: str) -> dict:
  """The release file's State as nested dicts of numpy arrays."""
  if not os.path.exists(path):
    raise MissingPath(f"{what} does not exist; {_HOW}.")
  if os.path.isdir(path):
    raise LayoutError(f"{what} is a directory; {_HOW}.")
  import flax.serialization
  with open(path, "rb") as f:
    data = f.read()
  try:
    state = flax.serialization.msgpack_restore(data)
  except Exception as e:  # not msgpack, truncated download, another serialiser's file
    raise LayoutError(f"{what} is not a flax msgpack checkpoint ({type(e).__name__}); it is "
                      f"damaged (an interrupted download?) or of another format: {_HOW}.") from None
  if not isinstance(state, dict):
    raise LayoutError(f"{what} holds a {type(state).__name__}, not the release's State; {_HOW}.")
  return state


def _leaves(tree, prefix=""):
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      yield from _leaves(v, path)
    else:
      yield path, v


def _need(tree: dict, names, where: str, what: str) -> None:
  missing = sorted(set(names) - set(tree))
  extra = sorted(set(tree) - set(names))
  if missing or extra:
    parts = ([f"no {', '.join(missing)}"] if missing else []) + (
        [f"unexpected {', '.join(extra)}"] if extra else [])
    raise LayoutError(f"{what}: {where} has {' and '.join(parts)}: not the release's NCSN++.")


def _array(x) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x, np.float32))


def ncsnpp_from_release(tree: dict, what: str) -> tuple[dict, dict]:
  """A release parameter tree -> (cm_jax NCSN++ params, report{tensors, parameters, mapping})."""
  if not isinstance(tree, dict) or not tree:
    raise LayoutError(f"{what}: the parameter tree is empty or not a tree of arrays.")
  if set(tree) == {"params"} and isinstance(tree["params"], dict):  # saved as Flax variables
    tree = tree["params"]
  out: dict[str, Any] = {}
  mapping: list[tuple[str, str]] = []

  def put(dst: str, value, *srcs: str):
    node = out
    parts = dst.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = _array(value)
    mapping.extend((s, dst) for s in srcs)

  for name, sub in tree.items():
    m = _INDEXED.match(str(name))
    base, idx = (m.group(1), m.group(2)) if m else (str(name), "")
    if not isinstance(sub, dict) or (base not in _RENAME and base not in _PLAIN):
      raise LayoutError(f"{what}: {name} is not a module of the release's NCSN++ "
                        f"({', '.join(list(_RENAME) + list(_PLAIN))}).")
    new = f"{_RENAME.get(base, base)}_{idx}"
    if base == "AttnBlockpp":
      _need(sub, ["GroupNorm_0", "NIN_0", "NIN_1", "NIN_2", "NIN_3"], name, what)
      for nin in ("NIN_0", "NIN_1", "NIN_2", "NIN_3"):
        _need(sub[nin], ["W", "b"], f"{name}/{nin}", what)
      _need(sub["GroupNorm_0"], ["scale", "bias"], f"{name}/GroupNorm_0", what)
      for leaf in ("scale", "bias"):
        put(f"{new}/GroupNorm_0/{leaf}", sub["GroupNorm_0"][leaf], f"{name}/GroupNorm_0/{leaf}")
      qkv = ("NIN_0", "NIN_1", "NIN_2")
      put(f"{new}/qkv/kernel", np.concatenate([np.asarray(sub[n]["W"]) for n in qkv], axis=1),
          *(f"{name}/{n}/W" for n in qkv))
      put(f"{new}/qkv/bias", np.concatenate([np.asarray(sub[n]["b"]) for n in qkv]),
          *(f"{name}/{n}/b" for n in qkv))
      put(f"{new}/proj_out/kernel", sub["NIN_3"]["W"], f"{name}/NIN_3/W")
      put(f"{new}/proj_out/bias", sub["NIN_3"]["b"], f"{name}/NIN_3/b")
    elif base == "Downsample":
      _need(sub, ["Conv2d_0"], name, what)
      _need(sub["Conv2d_0"], ["weight", "bias"], f"{name}/Conv2d_0", what)
      put(f"{new}/Conv_0/kernel", sub["Conv2d_0"]["weight"], f"{name}/Conv2d_0/weight")
      put(f"{new}/Conv_0/bias", sub["Conv2d_0"]["bias"], f"{name}/Conv2d_0/bias")
    else:
      if base == "ResnetBlockBigGANpp":
        extra = sorted(set(sub) - _RES_PARTS)
        if extra:
          raise LayoutError(f"{what}: {name} has {', '.join(extra)}, which BigGAN residual "
                            "blocks of the release do not.")
      for path, value in _leaves(sub):
        put(f"{new}/{path}", value, f"{name}/{path}")
  report = {"tensors": len(list(_leaves(tree))),
            "parameters": int(sum(np.size(v) for _, v in _leaves(tree))),
            "mapping": mapping}
  return out, report


def release_from_ncsnpp(params: dict) -> dict:
  """cm_jax NCSN++ params -> the release's names and layout (the inverse of
  ncsnpp_from_release; for exporting, and for the tests that build release files)."""
  out: dict[str, Any] = {}
  for name, sub in params.items():
    base, _, idx = str(name).rpartition("_")
    old = f"{_BACK.get(base, base)}_{idx}"
    if base == "MultiHeadAttention":
      q, k, v = np.split(np.asarray(sub["qkv"]["kernel"]), 3, axis=1)
      qb, kb, vb = np.split(np.asarray(sub["qkv"]["bias"]), 3)
      out[old] = {"GroupNorm_0": {k_: np.asarray(a) for k_, a in sub["GroupNorm_0"].items()},
                  "NIN_0": {"W": q, "b": qb}, "NIN_1": {"W": k, "b": kb},
                  "NIN_2": {"W": v, "b": vb},
                  "NIN_3": {"W": np.asarray(sub["proj_out"]["kernel"]),
                            "b": np.asarray(sub["proj_out"]["bias"])}}
    elif base == "FIRConvDown":
      out[old] = {"Conv2d_0": {"weight": np.asarray(sub["Conv_0"]["kernel"]),
                               "bias": np.asarray(sub["Conv_0"]["bias"])}}
    else:
      out[old] = _copy(sub)
  return out


def _copy(tree):
  return {k: _copy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree)


def release_state(params: dict, *, ema_params: Optional[dict] = None,
                  target_params: Optional[dict] = None, step: int = 0,
                  edm_file: bool = False) -> dict:
  """The release's State as flax's to_state_dict lays it out (what its checkpoints serialise),
  around parameter trees already in the release's names. edm_file: `edm_cifar10_ema`, whose
  params are its EMA and which has no target network."""
  ema = params if (edm_file or ema_params is None) else ema_params
  zeros = lambda t: {k: zeros(v) for k, v in t.items()} if isinstance(t, dict) else \
      np.zeros_like(np.asarray(t))
  state = {"step": np.int64(step), "lr": np.float32(2e-4 if edm_file else 4e-4),
           "ema_rate": np.float32(0.9999), "params": params, "params_ema": ema,
           "model_state": {},
           # optax chain(clip_by_global_norm, adamw): (EmptyState, (ScaleByAdamState, ...)).
           "opt_state": {"0": {}, "1": {"0": {"count": np.int32(step), "mu": zeros(params),
                                              "nu": zeros(params)}, "1": {}, "2": {}}},
           "rng_state": np.array([0, 42], np.uint32)}
  if target_params is not None and not edm_file:
    state["target_params"] = target_params
  return state


def import_state(raw: dict, *, weights: str = "ema", what: str) -> dict:
  """The release State -> {params, ema_params, target_params (or None), step, report}.

  weights: 'ema' takes params_ema as the evaluation weights (what the paper scored), 'online'
  the online params. Training from the workdir starts at the online params either way."""
  if weights not in ("ema", "online"):
    raise LayoutError(f"--params must be ema or online, got {weights!r}.")
  has = [k for k in ("params", "params_ema", "target_params") if isinstance(raw.get(k), dict)]
  if "params" not in has and "params_ema" not in has:
    keys = ", ".join(sorted(map(str, raw))[:8]) or "nothing"
    raise LayoutError(f"{what} holds no params or params_ema (it has {keys}): not a State "
                      f"checkpoint of the release; {_HOW}.")
  eval_key = "params_ema" if weights == "ema" else "params"
  if eval_key not in has:
    other = "online" if weights == "ema" else "ema"
    raise LayoutError(f"{what} has no {eval_key}; pass --params={other}.")
  ema, report = ncsnpp_from_release(raw[eval_key], what)
  online = ncsnpp_from_release(raw["params"], what)[0] if "params" in has else ema
  target = (ncsnpp_from_release(raw["target_params"], what)[0]
            if "target_params" in has else None)
  step = raw.get("step")
  return {"params": online, "ema_params": ema, "target_params": target,
          "step": None if step is None else int(np.asarray(step)), "report": report}
