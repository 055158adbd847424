"""PyTorch weight files -> Flax parameter trees (pure mappings; the CLI is `cm_jax.convert`).

Every function returns (params, report) where report lists which keys of the file were used and
which were deliberately dropped (BatchNorm step counters; VGG16's classifier, which LPIPS never
evaluates). A key that is neither, a missing key or a wrong shape is a ValueError naming it: a
file of another layout never converts silently.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from cm_jax.errors import MissingDependency, MissingPath, UserError
from cm_jax.evaluation import inception
from cm_jax.models import lpips


class LayoutError(UserError):
  """The file is not the layout the converter expects; the message says what was found."""


def load_torch_file(path: str) -> dict[str, np.ndarray]:
  """A state dict (key -> float32 array), read with torch.load(weights_only=True)."""
  if not os.path.isfile(path):
    raise MissingPath(f"{path} does not exist.")
  try:
    import torch
  except ImportError:
    raise MissingDependency("Reading .pth files needs torch: pip install 'cm_jax[torch]' "
                      "(the CPU build is enough).") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickles of whole modules, non-torch files, truncated downloads
    # torch's own message advises weights_only=False, i.e. running the file's code: not quoted.
    raise LayoutError(f"{path} is not a weights-only PyTorch state dict ({type(e).__name__}); "
                      "it is damaged, not a PyTorch file, or holds Python objects besides "
                      "tensors, which cm_jax never unpickles. Give the .pth file of tensors "
                      "itself (a state_dict).") from None
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
    raise LayoutError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors.")
  return {str(k): v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v)
          for k, v in obj.items()}


def _fill(template: Any, values: dict[str, np.ndarray], what: str) -> Any:
  """The template tree with every leaf taken from `values` (keyed by '/'-joined path)."""
  def leaf(path, want):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    if key not in values:
      raise LayoutError(f"{what}: no weight for {key}")
    got = values[key]
    if tuple(got.shape) != tuple(want.shape):
      raise LayoutError(f"{what}: {key} has shape {tuple(got.shape)}, the network needs "
                        f"{tuple(want.shape)}")
    return np.ascontiguousarray(got, np.float32)
  return jax.tree_util.tree_map_with_path(leaf, template)


def _check_all_used(state: dict, used: set, dropped: set, what: str, expect: str) -> None:
  unknown = sorted(set(state) - used - dropped)
  if unknown:
    raise LayoutError(f"{what}: {len(unknown)} keys this converter does not know "
                      f"({', '.join(unknown[:6])}{', ...' if len(unknown) > 6 else ''}); "
                      f"expected {expect}.")


_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def inception_from_state_dict(state: dict[str, np.ndarray], what: str = "Inception file"
                              ) -> tuple[Any, dict]:
  """pytorch-fid's FID Inception layout (pt_inception-2015-12-05-*.pth) -> InceptionV3 params."""
  if "Mixed_7c.branch_pool.conv.weight" not in state or "fc.weight" not in state:
    some = ", ".join(sorted(state)[:4])
    raise LayoutError(f"{what} is not pytorch-fid's FID Inception layout (no Mixed_7c / fc "
                      f"weights; its keys start {some}). Give pytorch-fid's "
                      "pt_inception-2015-12-05-6726825d.pth.")
  values, used, dropped = {}, set(), set()
  for key, arr in state.items():
    parts = key.split(".")
    if key == "fc.weight":
      values["fc/kernel"] = arr.T
    elif key == "fc.bias":
      values["fc/bias"] = arr
    elif len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight":
      values["/".join(parts[:-2] + ["kernel"])] = arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN:
      values["/".join(parts[:-2] + [_BN[parts[-1]]])] = arr
    elif len(parts) >= 3 and parts[-2] == "bn" and parts[-1] == "num_batches_tracked":
      dropped.add(key)
      continue
    else:
      continue
    used.add(key)
  _check_all_used(state, used, dropped, what, "only conv/bn/fc weights of the FID Inception")
  params = _fill(inception.param_template(), values, what)
  n_leaves = len(jax.tree_util.tree_leaves(params))
  if n_leaves != len(used):
    raise LayoutError(f"{what}: {len(used)} weights for {n_leaves} parameters; some keys of the "
                      "file do not belong to the FID Inception.")
  return params, {"used": sorted(used), "dropped": sorted(dropped)}


def lpips_from_state_dicts(vgg: dict[str, np.ndarray], heads: dict[str, np.ndarray]
                           ) -> tuple[Any, dict]:
  """torchvision's VGG16 (features.N.*, classifier.*) + LPIPS v0.1 vgg heads (linK.model.1.weight,
  as the lpips package ships them) -> LPIPS params."""
  vgg = {k[len("net."):] if k.startswith("net.") else k: v for k, v in vgg.items()}
  if "features.0.weight" not in vgg:
    raise LayoutError("VGG16 file: no features.0.weight; give torchvision's vgg16 state dict "
                      f"(its keys start {', '.join(sorted(vgg)[:4])}).")
  head_keys = {}
  for key in heads:
    parts = key.split(".")
    if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
      head_keys[int(parts[0][3:])] = key
  if sorted(head_keys) != [0, 1, 2, 3, 4] or len(heads) != 5:
    raise LayoutError("LPIPS heads file: expected the five VGG heads lin0..lin4 "
                      f"(linK.model.1.weight), got keys {sorted(heads)[:8]}. Give the v0.1 "
                      "vgg.pth of the lpips package.")
  values, used, dropped = {}, set(), set()
  for i, idx in enumerate(lpips.TORCH_CONV_INDICES):
    for attr, name in (("weight", "kernel"), ("bias", "bias")):
      key = f"features.{idx}.{attr}"
      if key not in vgg:
        raise LayoutError(f"VGG16 file: missing {key}; is it torchvision's vgg16 (not vgg16_bn)?")
      arr = vgg[key]
      values[f"conv{i}/{name}"] = arr.transpose(2, 3, 1, 0) if attr == "weight" else arr
      used.add(key)
  dropped = {k for k in vgg if k.startswith("classifier.")}
  _check_all_used(vgg, used, dropped, "VGG16 file", "torchvision's vgg16 (features + classifier)")
  for k, key in head_keys.items():
    values[f"lin{k}"] = heads[key].reshape(-1)
  params = _fill(lpips.param_template(), values, "LPIPS weights")
  return params, {"used": sorted(used) + sorted(head_keys.values()), "dropped": sorted(dropped)}
