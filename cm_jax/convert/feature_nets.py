"""The fixed feature networks' weights: pytorch-fid's FID Inception and torchvision's VGG16 with
the LPIPS v0.1 heads, each converted into a directory of its own (`weight_store`).

The command is `python -m cm_jax.convert inception|lpips` (__main__.py); these are its steps.
"""
from __future__ import annotations

import os

from cm_jax import files, weight_store
from cm_jax.convert import release_workdir, torch_weights
from cm_jax.errors import UserError
from cm_jax.evaluation import inception
from cm_jax.models import lpips


def check_destination(out: str, overwrite: bool) -> None:
  """--out is a new or empty directory, or (with --overwrite) one of converted weights; never a
  training workdir or another folder with files in it."""
  files.check_output_dir(out, "--out")
  if not os.path.isdir(out) or not os.listdir(out):
    return
  entries = set(os.listdir(out))
  if not entries <= {weight_store.PARAMS_FILE, weight_store.META_FILE}:
    raise UserError(f"--out={out} already holds other files ({', '.join(sorted(entries)[:5])}); "
                    "converted weights get a directory of their own: give a new or empty one.")
  if not overwrite:
    raise UserError(f"--out={out} already holds converted weights; pass --overwrite to replace "
                    "them, or give a new directory.")


def convert_inception(src: str, out: str) -> dict:
  state = torch_weights.load_torch_file(src)
  params, report = torch_weights.inception_from_state_dict(state, f"Inception file {src}")
  weight_store.save(out, params, {"kind": inception.KIND, "source": src,
                                  "sha256": release_workdir.sha256(src),
                                  "dropped": report["dropped"]})
  return report


def convert_lpips(vgg: str, heads: str, out: str) -> dict:
  params, report = torch_weights.lpips_from_state_dicts(torch_weights.load_torch_file(vgg),
                                                         torch_weights.load_torch_file(heads))
  weight_store.save(out, params, {"kind": lpips.KIND, "vgg": vgg,
                                  "vgg_sha256": release_workdir.sha256(vgg), "heads": heads,
                                  "heads_sha256": release_workdir.sha256(heads),
                                  "dropped": report["dropped"]})
  return report
