"""python -m cm_jax.convert inception --src=pt_inception-2015-12-05-6726825d.pth --dst=DIR
python -m cm_jax.convert lpips --vgg=vgg16-397923af.pth --heads=LPIPS_v0.1_vgg.pth --dst=DIR
python -m cm_jax.convert openai --src=cd_imagenet64_l2.pt --dst=runs/in64_cd_l2_release
python -m cm_jax.convert diffusers --src=diffusers-cd_imagenet64_l2 --dst=runs/in64_cd_l2_hf
python -m cm_jax.convert jcm --src=cd-lpips/checkpoints/checkpoint_80 --kind=cd --dst=runs/c10_cd

inception / lpips: the evaluator's and the LPIPS distance's weights. The Inception file is
pytorch-fid's FID weights (the 2015 TF graph); the VGG16 file is torchvision's vgg16 state dict;
the heads file is the lpips package's `weights/v0.1/vgg.pth`. Every weight of each file is mapped
(or, for VGG16's classifier and BatchNorm step counters, deliberately dropped) and every parameter
of the Flax network is filled; anything else is an error.

openai / diffusers / jcm: the released consistency models (and EDM teachers) -> a complete
workdir (config.json, one finished checkpoint, release.json) that cm_jax.sample, evaluate, edit
and --config.teacher= use as they use a trained one. The file name gives the family and kind
(`cd_imagenet64_l2.pt`, `edm_bedroom256_ema.pt`, `edm_cifar10_ema`); --family / --kind supply or
override them, --config picks another config than the family's dataset file. The network is
checked tensor by tensor against that config's; nothing is written when anything is wrong.
"""
from __future__ import annotations

import argparse
import os
import sys

from cm_jax import cli, files
from cm_jax import weight_store
from cm_jax.convert import release_workdir, releases, torch_weights
from cm_jax.errors import UserError
from cm_jax.evaluation import inception
from cm_jax.models import lpips


_sha256 = release_workdir.sha256


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


def _add_release_flags(p, family: bool = True) -> None:
  p.add_argument("--src", required=True)
  p.add_argument("--dst", required=True, help="a new or empty workdir")
  if family:
    p.add_argument("--family", choices=tuple(f for f in release_workdir.FAMILIES if f != "cifar10"),
                   help="default: from the file name")
  p.add_argument("--kind", choices=release_workdir.KINDS, help="default: from the file name")
  p.add_argument("--config", default=None,
                 help="FILE.py:ARGS of the network and data (default: the family's dataset "
                      "file, method=KIND, variant=release where it has one)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                 help="the compute dtype sampling from the workdir uses")


def _run_release(args) -> int:
  common = dict(kind=args.kind, config_spec=args.config, dtype=args.dtype)
  if args.what == "openai":
    record, lines = releases.import_openai(args.src, args.dst, family=args.family, **common)
  elif args.what == "diffusers":
    record, lines = releases.import_diffusers(args.src, args.dst, family=args.family, **common)
  else:
    record, lines = releases.import_jcm(args.src, args.dst, weights=args.weights, **common)
  print("\n".join(lines))
  print(f"Wrote the workdir {args.dst} (step {record['step']}, method={record['method']}).\n"
        f"Sample it: python -m cm_jax.sample --workdir={args.dst} --steps=1")
  return 0


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
  _add_release_flags(sub.add_parser(
      "openai", help="a .pt file of the OpenAI PyTorch release (ADM UNet) -> a workdir"))
  _add_release_flags(sub.add_parser(
      "diffusers", help="a downloaded openai/diffusers-* folder (UNet2DModel) -> a workdir"))
  p = sub.add_parser("jcm", help="a checkpoint_N / edm_cifar10_ema file of the JAX CIFAR-10 "
                                 "release (NCSN++) -> a workdir")
  _add_release_flags(p, family=False)
  p.add_argument("--weights", default="ema", choices=("ema", "online"),
                 help="the evaluation weights: the release's params_ema (default) or params")
  for p in sub.choices.values():
    p.add_argument("--debug", action="store_true", help="print the traceback of every error")
  args = parser.parse_args(argv)
  cli.setup_logging()
  try:
    if args.what in releases.FORMATS:
      return _run_release(args)
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
