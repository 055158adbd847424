"""Released consistency models -> complete cm_jax workdirs.

An imported workdir is what a finished training run leaves: config.json (the dataset file's
config of the release's method, `variant=release` where the dataset file has one), one finished
Orbax step whose params, evaluation EMA and (for methods with one) target network are the
imported weights, and `release.json`: the source file, its sha256 and which tensor went where.
`cm_jax.sample`, `cm_jax.evaluate`, `cm_jax.edit`, `cm_jax.load` and `--config.teacher=` read it
as they read any workdir.

The network is never taken from the file name: the file's tensors must describe exactly the
network of the config (`--config` picks another one, e.g. a `runlocal` shrink).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cm_jax import checkpoint, files, karras
from cm_jax.errors import UserError
from cm_jax.train import restore
from cm_jax.train.experiment import Experiment
from cm_jax.train.state import TrainState

log = logging.getLogger("cm_jax")

RELEASE_FILE = "release.json"
KINDS = ("edm", "cd", "ct")
# family -> (dataset file, extra get_config arguments)
FAMILIES = {
    "imagenet64": ("imagenet64.py", ""),
    "bedroom256": ("lsun256.py", ",category=bedroom"),
    "cat256": ("lsun256.py", ",category=cat"),
    "cifar10": ("cifar10.py", ""),
}
# The dataset files with a `variant=release` row per method (EDM rows have none).
_RELEASE_VARIANT = ("cd", "ct")

# The release's two-step `ts` (index into a descending Karras grid of N levels), by
# (family, kind, distance); distance None = either. Cat CD has none published: its config's level.
RELEASED_TWO_STEP = {
    ("imagenet64", "cd", None): ((0, 22, 39), 40),
    ("imagenet64", "ct", None): ((0, 106, 200), 201),
    ("bedroom256", "cd", "lpips"): ((0, 17, 39), 40),
    ("bedroom256", "cd", "l2"): ((0, 18, 39), 40),
    ("bedroom256", "ct", None): ((0, 67, 150), 151),
    ("cat256", "ct", None): ((0, 62, 150), 151),
    ("cifar10", "cd", None): ((0, 11, 17), 18),
}

# `cd_imagenet64_l2.pt`, `diffusers-cd_imagenet64_l2` (a hub repo's folder), `edm_cifar10_ema`
_NAME = re.compile(r"^(?:diffusers-)?(edm|cd|ct)_(imagenet64|bedroom256|cat256|cifar10)"
                   r"(?:_(l2|lpips))?")
# The JAX release's run folders: `cd-lpips/checkpoints/checkpoint_80`, `ct-lpips/...`
_RUN_DIR = re.compile(r"^(cd|ct)-(l1|l2|lpips)$")


@dataclasses.dataclass(frozen=True)
class Release:
  family: str
  kind: str
  distance: Optional[str] = None   # CD/CT's training distance, when the file name says it

  @property
  def two_step(self) -> Optional[tuple[tuple[int, ...], int]]:
    return (RELEASED_TWO_STEP.get((self.family, self.kind, self.distance))
            or RELEASED_TWO_STEP.get((self.family, self.kind, None)))


def identify(path: str, family: Optional[str], kind: Optional[str],
             default_family: Optional[str] = None) -> Release:
  """The release a file is, from its name (`cd_imagenet64_l2.pt`, `edm_cifar10_ema`, ...);
  --family / --kind override or supply what the name does not say."""
  m = _NAME.match(os.path.basename(path.rstrip("/")))
  name_kind, name_family, distance = (m.groups() if m else (None, None, None))
  if m is None and default_family == "cifar10":
    runs = [r for r in map(_RUN_DIR.match, pathlib.Path(os.path.abspath(path)).parts) if r]
    if runs:
      name_kind, distance = runs[-1].groups()
  family = family or name_family or default_family
  kind = kind or name_kind
  if family not in FAMILIES:
    raise UserError(f"Cannot tell the release family of {path} from its name: pass "
                    f"--family={'|'.join(FAMILIES)}.")
  if kind not in KINDS:
    raise UserError(f"Cannot tell whether {path} is an EDM, CD or CT model from its name: pass "
                    f"--kind={'|'.join(KINDS)}.")
  return Release(family=family, kind=kind, distance=distance)


def configs_dir() -> pathlib.Path:
  """The dataset config files, installed beside the package (a checkout or a wheel alike)."""
  return pathlib.Path(__file__).resolve().parents[2] / "configs"


def default_config_spec(release: Release) -> str:
  file, extra = FAMILIES[release.family]
  variant = ",variant=release" if release.kind in _RELEASE_VARIANT else ""
  return f"{configs_dir() / file}:method={release.kind}{variant}{extra}"


def load_config_spec(spec: str) -> ml_collections.ConfigDict:
  """`FILE.py[:ARGS]` as `--config=` of cm_jax.train reads it (the file's get_config(ARGS))."""
  from ml_collections.config_flags import config_flags
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise UserError(f"--config={spec}: {path} is not a config file; give a dataset file such as "
                    f"{configs_dir() / 'imagenet64.py'}:method=cd.")
  try:
    config = config_flags.ConfigFileFlagParser("config", lock_config=False).parse(spec)
  except ValueError as e:  # the dataset file's own message, behind ml_collections' trace
    raise UserError(f"--config={spec}: {str(e).strip().splitlines()[-1]}") from None
  return config


def release_config(release: Release, spec: Optional[str], dtype: str
                   ) -> ml_collections.ConfigDict:
  config = load_config_spec(spec or default_config_spec(release))
  if config.method != release.kind:
    raise UserError(f"--config is a method={config.method} config but the file is a "
                    f"{release.kind.upper()} model; give a method={release.kind} config or "
                    "--kind.")
  if dtype not in ("float32", "bfloat16"):
    raise UserError(f"--dtype must be float32 or bfloat16, got {dtype!r}.")
  config.model.dtype = dtype
  if release.distance and release.kind in ("cd", "ct"):
    config.consistency.distance = release.distance
  if release.two_step is not None and release.kind != "edm":
    ts, steps = release.two_step
    levels = karras.NoiseLevels.from_config(config.karras)
    config.sample.two_step_sigma = float(karras.ts_to_sigmas([ts[1]], steps, levels)[0])
  return config


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digest(path: str) -> str:
  """sha256 of a file, or of a directory's files in name order (a diffusers folder)."""
  if os.path.isfile(path):
    return sha256(path)
  h = hashlib.sha256()
  for root, _, names in sorted(os.walk(path)):
    for name in sorted(names):
      full = os.path.join(root, name)
      h.update(os.path.relpath(full, path).encode() + b"\0" + sha256(full).encode())
  return h.hexdigest()


def check_destination(dst: str) -> None:
  """A new or empty directory (or the config.json / release.json of an import that stopped
  before its checkpoint); never a workdir that holds checkpoints."""
  files.check_output_dir(dst, "--out")
  if not os.path.isdir(dst):
    return
  if checkpoint.finished_steps(dst) or checkpoint.has_checkpoint(dst):
    raise checkpoint.CheckpointError(
        f"--out={dst} holds checkpoints; an import never overwrites a workdir: give a new "
        "--out (or delete that one yourself).")
  leftovers = set(os.listdir(dst)) - {checkpoint.CONFIG_FILE, RELEASE_FILE,
                                      checkpoint.CHECKPOINT_DIR}
  ckpt_dir = os.path.join(dst, checkpoint.CHECKPOINT_DIR)
  if leftovers or (os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
    shown = ", ".join(sorted(leftovers)[:5]) or checkpoint.CHECKPOINT_DIR + "/..."
    raise UserError(f"--out={dst} already holds files ({shown}); an imported model gets a "
                    "workdir of its own: give a new or empty directory.")


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v))
          for path, v in flat}


def check_against_config(params, exp: Experiment, spec_shown: str) -> None:
  """The imported tree is exactly the config's network: same names, same shapes."""
  want, got = _shapes(exp.abstract_state().params), _shapes(params)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if not (missing or extra or shapes):
    return
  parts = []
  if shapes:
    parts.append("shapes differ: " + "; ".join(f"{k} {got[k]} in the file, {want[k]} in the "
                                               "config" for k in shapes[:3]))
  if missing:
    parts.append(f"{len(missing)} parameters of the config's network are not in the file "
                 f"({', '.join(missing[:3])})")
  if extra:
    parts.append(f"{len(extra)} of the file's are not in the config's network "
                 f"({', '.join(extra[:3])})")
  raise UserError(f"The file holds another network than {spec_shown}: {'; '.join(parts)}. Give "
                  "the config that describes it (--config=FILE.py:ARGS, --family).")


@dataclasses.dataclass
class ImportedWeights:
  params: Any                       # online weights: where training from the workdir starts
  ema_params: Any                   # the evaluation weights
  target_params: Optional[Any] = None   # CT/CD target network; None = the online weights


def write_workdir(dst: str, config: ml_collections.ConfigDict, weights: ImportedWeights,
                  record: dict) -> dict:
  """Writes config.json, the one finished checkpoint (at train.num_steps) and release.json.

  `record` (format, source, kind, family, ...) goes into release.json and the checkpoint's meta.
  Returns the record as written."""
  check_destination(dst)
  exp = Experiment.from_config(restore.without_training_distance(config))
  for name in ("params", "ema_params", "target_params"):
    tree = getattr(weights, name)
    if tree is not None:
      check_against_config(tree, exp, record.get("config_spec", "the config"))
  abstract = exp.abstract_state()
  # One device copy per distinct tree: the PyTorch release's single set of weights is params,
  # EMA and target at once (a 526M-parameter LSUN UNet is 2.1 GB a copy).
  copies: dict[int, Any] = {}
  def as_array(tree):
    if id(tree) not in copies:
      copies[id(tree)] = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
    return copies[id(tree)]
  params = as_array(weights.params)
  ema = as_array(weights.ema_params)
  target = None
  if exp.method.has_target_network:
    target = as_array(weights.target_params if weights.target_params is not None
                      else weights.params)
  step = int(config.train.num_steps)
  state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema,
                     target_params=target, opt_state=exp.tx.init(params),
                     rng=jax.random.PRNGKey(int(config.seed)))
  state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, abstract))
  record = {**record, "step": step, "method": str(config.method),
            "parameters": int(sum(int(np.size(x)) for x in jax.tree.leaves(params))),
            "target_network": "imported" if weights.target_params is not None and target is not None
            else ("the online weights" if target is not None else None)}
  os.makedirs(dst, exist_ok=True)
  files.write_atomically(os.path.join(dst, RELEASE_FILE),
                         json.dumps(record, indent=1, sort_keys=True).encode())
  checkpoint.check_or_write_config(dst, config)
  meta = {"step": step, "data_position": step, "method": str(config.method),
          "config": checkpoint.config_record(config), "skipped_steps": 0,
          "imported": {k: v for k, v in record.items() if k != "mapping"}}
  ckpt = checkpoint.Checkpointer(dst, keep=1, async_save=False)
  try:
    ckpt.save(state, meta)
  finally:
    ckpt.close()
  return record
