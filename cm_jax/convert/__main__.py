"""python -m cm_jax.convert inception --src=pt_inception-2015-12-05-6726825d.pth --out=DIR
python -m cm_jax.convert lpips --vgg=vgg16-397923af.pth --heads=LPIPS_v0.1_vgg.pth --out=DIR
python -m cm_jax.convert openai --src=cd_imagenet64_l2.pt --out=runs/in64_cd_l2_release
python -m cm_jax.convert diffusers --src=diffusers-cd_imagenet64_l2 --out=runs/in64_cd_l2_hf
python -m cm_jax.convert jcm --src=cd-lpips/checkpoints/checkpoint_80 --kind=cd --out=runs/c10_cd

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

Each flag's help names the commands that read it; another command refuses it.
"""
from __future__ import annotations

from absl import flags

from cm_jax import cli
from cm_jax.convert import feature_nets, release_workdir, releases
from cm_jax.errors import UserError

_SRC = flags.DEFINE_string("src", None, "inception: pytorch-fid's .pth file; openai: a .pt file "
                           "of the PyTorch release; diffusers: a downloaded openai/diffusers-* "
                           "folder; jcm: a checkpoint_N or edm_cifar10_ema file of the JAX "
                           "CIFAR-10 release.")
_OUT = flags.DEFINE_string("out", None, "The directory to write, new or empty: the converted "
                           "weights (inception, lpips) or a workdir (openai, diffusers, jcm).")
_VGG = flags.DEFINE_string("vgg", None, "lpips: torchvision's VGG16 state dict "
                           "(vgg16-397923af.pth).")
_HEADS = flags.DEFINE_string("heads", None, "lpips: the lpips package's weights/v0.1/vgg.pth.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "inception, lpips: replace converted weights "
                               "already in --out.")
_FAMILY = flags.DEFINE_enum("family", None,
                            [f for f in release_workdir.FAMILIES if f != "cifar10"],
                            "openai, diffusers: the release family. Default: from the file name.")
_KIND = flags.DEFINE_enum("kind", None, release_workdir.KINDS, "openai, diffusers, jcm: the "
                          "model kind. Default: from the file name.")
_CONFIG = flags.DEFINE_string("config", None, "openai, diffusers, jcm: FILE.py:ARGS of the "
                              "network and data. Default: the family's dataset file, "
                              "method=KIND, variant=release where it has one.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "openai, diffusers, jcm: "
                           "the compute dtype sampling from the workdir uses.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "online"], "jcm: the evaluation weights, "
                            "the release's params_ema (ema) or its params (online).")

# command -> (flags it needs, flags it reads besides)
COMMANDS = {
    "inception": (("src", "out"), ("overwrite",)),
    "lpips": (("vgg", "heads", "out"), ("overwrite",)),
    "openai": (("src", "out"), ("family", "kind", "config", "dtype")),
    "diffusers": (("src", "out"), ("family", "kind", "config", "dtype")),
    "jcm": (("src", "out"), ("kind", "config", "dtype", "params")),
}
_ALL_FLAGS = sorted({name for needed, optional in COMMANDS.values() for name in needed + optional})


def command_of(args: list[str]) -> str:
  """The one command word; its missing flags and the flags it does not read are errors."""
  if len(args) != 1 or args[0] not in COMMANDS:
    given = " ".join(args) or "none"
    raise UserError(f"Give one command, {' | '.join(COMMANDS)} (got: {given}); run with --help "
                    "for the flags of each.")
  command = args[0]
  needed, optional = COMMANDS[command]
  missing = [f"--{name}" for name in needed if not flags.FLAGS[name].value]
  if missing:
    raise UserError(f"{command} needs {', '.join(missing)}.")
  # Refused, not ignored: a flag given to the wrong command is a mistake in the command line.
  foreign = [f"--{name}" for name in _ALL_FLAGS
             if flags.FLAGS[name].present and name not in needed + optional]
  if foreign:
    raise UserError(f"{', '.join(foreign)}: not read by `convert {command}`.")
  return command


def _run_release(command: str) -> None:
  common = dict(kind=_KIND.value, config_spec=_CONFIG.value, dtype=_DTYPE.value)
  if command == "openai":
    record, lines = releases.import_openai(_SRC.value, _OUT.value, family=_FAMILY.value, **common)
  elif command == "diffusers":
    record, lines = releases.import_diffusers(_SRC.value, _OUT.value, family=_FAMILY.value,
                                              **common)
  else:
    record, lines = releases.import_jcm(_SRC.value, _OUT.value, weights=_PARAMS.value, **common)
  print("\n".join(lines))
  print(f"Wrote the workdir {_OUT.value} (step {record['step']}, method={record['method']}).\n"
        f"Sample it: python -m cm_jax.sample --workdir={_OUT.value} --steps=1")


def _run_feature_net(command: str) -> None:
  feature_nets.check_destination(_OUT.value, _OVERWRITE.value)
  if command == "inception":
    report = feature_nets.convert_inception(_SRC.value, _OUT.value)
    use = f"--inception_weights={_OUT.value}"
  else:
    report = feature_nets.convert_lpips(_VGG.value, _HEADS.value, _OUT.value)
    use = f"--config.consistency.lpips_weights={_OUT.value}"
  dropped = report["dropped"]
  print(f"Converted {len(report['used'])} weights (dropped {len(dropped)}: "
        f"{', '.join(dropped[:3])}{'...' if len(dropped) > 3 else ''}) -> {_OUT.value}\n"
        f"Use it with {use}")


def main(args: list[str]) -> None:
  command = command_of(args)
  if command in releases.FORMATS:
    _run_release(command)
  else:
    _run_feature_net(command)


if __name__ == "__main__":
  cli.run(main, takes_args=True)
