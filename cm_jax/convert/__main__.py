"""python -m cm_jax.convert inception --src=pt_inception-2015-12-05-6726825d.pth --dst=DIR
python -m cm_jax.convert lpips --vgg=vgg16-397923af.pth --heads=LPIPS_v0.1_vgg.pth --dst=DIR

The Inception file is pytorch-fid's FID weights (the 2015 TF graph); the VGG16 file is
torchvision's vgg16 state dict; the heads file is the lpips package's `weights/v0.1/vgg.pth`.
Every weight of each file is mapped (or, for VGG16's classifier and BatchNorm step counters,
deliberately dropped) and every parameter of the Flax network is filled; anything else is an error.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys

from cm_jax import cli, files
from cm_jax import weight_store
from cm_jax.convert import torch_weights
from cm_jax.errors import UserError
from cm_jax.evaluation import inception
from cm_jax.models import lpips


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def check_destination(dst: str, overwrite: bool) -> None:
  """--dst is a new or empty directory, or (with --overwrite) one of converted weights; never a
  training workdir or another folder with files in it."""
  files.check_output_dir(dst, "--dst")
  if not os.path.isdir(dst) or not os.listdir(dst):
    return
  entries = set(os.listdir(dst))
  if not entries <= {weight_store.PARAMS_FILE, weight_store.META_FILE}:
    raise UserError(f"--dst={dst} already holds other files ({', '.join(sorted(entries)[:5])}); "
                    "converted weights get a directory of their own: give a new or empty one.")
  if not overwrite:
    raise UserError(f"--dst={dst} already holds converted weights; pass --overwrite to replace "
                    "them, or give a new directory.")


def convert_inception(src: str, dst: str) -> dict:
  state = torch_weights.load_torch_file(src)
  params, report = torch_weights.inception_from_state_dict(state, f"Inception file {src}")
  weight_store.save(dst, params, {"kind": inception.KIND, "source": src, "sha256": _sha256(src),
                           "dropped": report["dropped"]})
  return report


def convert_lpips(vgg: str, heads: str, dst: str) -> dict:
  params, report = torch_weights.lpips_from_state_dicts(torch_weights.load_torch_file(vgg),
                                                         torch_weights.load_torch_file(heads))
  weight_store.save(dst, params, {"kind": lpips.KIND, "vgg": vgg, "vgg_sha256": _sha256(vgg),
                           "heads": heads, "heads_sha256": _sha256(heads),
                           "dropped": report["dropped"]})
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cm_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="what", required=True)
  p = sub.add_parser("inception", help="pytorch-fid's FID Inception weights -> Flax")
  p.add_argument("--src", required=True)
  p.add_argument("--dst", required=True)
  p = sub.add_parser("lpips", help="torchvision VGG16 + LPIPS v0.1 heads -> Flax")
  p.add_argument("--vgg", required=True)
  p.add_argument("--heads", required=True)
  p.add_argument("--dst", required=True)
  for p in sub.choices.values():
    p.add_argument("--overwrite", action="store_true",
                   help="replace converted weights already in --dst")
    p.add_argument("--debug", action="store_true", help="print the traceback of every error")
  args = parser.parse_args(argv)
  try:
    check_destination(args.dst, args.overwrite)
    if args.what == "inception":
      report = convert_inception(args.src, args.dst)
      use = f"--inception_weights={args.dst}"
    else:
      report = convert_lpips(args.vgg, args.heads, args.dst)
      use = f"--config.consistency.lpips_weights={args.dst}"
  except (UserError, ImportError) as e:
    return cli.report_user_error(e, debug=args.debug)
  print(f"Converted {len(report['used'])} weights (dropped {len(report['dropped'])}: "
        f"{', '.join(report['dropped'][:3])}{'...' if len(report['dropped']) > 3 else ''}) "
        f"-> {args.dst}\nUse it with {use}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
