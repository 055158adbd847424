"""Orbax checkpoints of the train state: async, keep-N, automatic resume from the workdir.

A checkpoint step holds two items: `state` (params, EMA, target, optimizer, step, RNG) and `meta`
(JSON: the step, which is also the data position, the method and the run's config). The config
is also in `WORKDIR/config.json`, for people and tools; a resume with another config is refused
before anything is written, against the checkpoint's record even when config.json is gone.

Every process of a multi-process run calls save and restore (Orbax writes each process's shards
and coordinates the commit). A save in progress lives in `STEP.orbax-checkpoint-tmp-*` and is
renamed to `STEP` only once complete, so a half-written checkpoint is never listed, never
resumed. A finished checkpoint damaged later (a file truncated or deleted by hand) fails to
restore: resume then warns, moves it aside to `corrupt-STEP-*` and takes the one before.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from cm_jax import defaults, files, storage
from cm_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
META_ITEM = "meta"
CORRUPT_PREFIX = "corrupt-"
# Orbax's last write into a step on an object store (its commit, where a disk gets a rename).
COMMIT_MARKER = "commit_success.txt"

log = logging.getLogger("cm_jax")


class _QuietReadOnly(logging.Filter):
  """Orbax warns on every read-only manager that its directory is read-only: asked for, so
  noise in every sample/evaluate/edit run."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_QuietReadOnly())

# Keys that may differ on resume: they change when and how the run reports, not what it computes.
RUNTIME_KEYS = (
    "train.log_every", "train.save_every", "train.keep_checkpoints", "train.sample_every",
    "train.num_grid_samples", "data.data_dir", "data.num_workers", "eval.",
    "train.skip_nonfinite", "parallel.",  # the layout over devices, not the mathematics
    "model.remat",                        # memory against recomputation, same results
    "train.grad_accum",                   # memory against time, the same mean gradient
)


class CheckpointError(UserError, RuntimeError):
  """A checkpoint or workdir that cannot be used as asked; the message says what to do."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_record(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _base_defaults() -> dict[str, Any]:
  """Flattened defaults (cm_jax/defaults.py): keys a later version added, which an older
  workdir's config.json lacks, take these values (they reproduce the older behaviour)."""
  return _flatten(config_record(defaults.base_config()))


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'a.b': value} with JSON values (tuples as lists), as config.json stores them."""
  return _flatten(config_record(config))


def _differences(old: dict, new: dict) -> list[str]:
  """Non-runtime keys whose values differ; keys an older version lacked take the defaults."""
  flat_old, flat_new = _flatten(old), _flatten(new)
  for k, v in _base_defaults().items():
    flat_old.setdefault(k, v)
    flat_new.setdefault(k, v)
  keys = sorted((k for k in set(flat_old) | set(flat_new)
                 if flat_old.get(k) != flat_new.get(k) and not k.startswith(RUNTIME_KEYS)),
                key=lambda k: (k != "method", k))  # the method first: it says the most
  return [f"{k}: {flat_old.get(k)!r} in the workdir, {flat_new.get(k)!r} now" for k in keys]


def _refuse(what: str, differ: list[str]) -> None:
  more = "; ..." if len(differ) > 8 else ""
  raise CheckpointError(f"{what} ({'; '.join(differ[:8])}{more}). Use a new --workdir, or pass "
                        "the same config to resume this run.")


def read_recorded_config(workdir: str) -> Optional[dict]:
  """WORKDIR/config.json as a dict, None when there is none."""
  path = storage.join(workdir, CONFIG_FILE)
  if not storage.exists(path):
    return None
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}); it records this workdir's config. "
                          "Restore it or use a new --workdir.") from None


def checkpoint_config(workdir: str) -> tuple[Optional[int], Optional[dict]]:
  """(step, config) recorded in the meta of the newest finished checkpoint that has one;
  (newest step, None) for checkpoints written before the meta carried the config.

  Reads the meta item's JSON file (`STEP/meta/metadata`, Orbax's JsonSave layout) directly:
  cheap, and it never touches the state arrays."""
  directory = storage.join(workdir, CHECKPOINT_DIR)
  steps = finished_steps(workdir)[::-1]
  if not steps:
    return None, None
  for step in steps:
    try:
      meta = json.loads(storage.read_text(storage.join(directory, str(step), META_ITEM,
                                                       "metadata")))
    except (OSError, ValueError):  # a damaged step: the one before still tells the config
      continue
    if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
      return step, meta["config"]
  return steps[0], None


def _write_config(workdir: str, config: dict) -> None:
  files.write_atomically(storage.join(workdir, CONFIG_FILE),
                         json.dumps(config, indent=2, sort_keys=True).encode())


def check_or_write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses a config other than the one the workdir's run was trained with, then writes
  WORKDIR/config.json (once for a new run; again only to restore a deleted one or add keys a
  newer version introduced). The run's identity is the config in its checkpoints' meta; the file
  is checked against it, so a deleted or edited config.json cannot let another config resume."""
  new = config_record(config)
  recorded = read_recorded_config(workdir)
  ckpt_step, ckpt_config = checkpoint_config(workdir)
  if ckpt_config is not None:
    differ = _differences(ckpt_config, new)
    if differ:
      _refuse(f"The workdir {workdir} holds a checkpoint (step {ckpt_step}) of another config",
              differ)
  if recorded is not None:
    differ = _differences(recorded, new)
    if differ and ckpt_step is not None:
      _refuse(f"The workdir {workdir} holds a checkpoint of another config", differ)
    if differ:
      log.warning("Replacing %s: the run it described saved no checkpoint.",
                  storage.join(workdir, CONFIG_FILE))
    elif set(_flatten(recorded)) >= set(_flatten(new)):
      return
  elif ckpt_step is not None:
    if ckpt_config is None:
      raise CheckpointError(
          f"{storage.join(workdir, CONFIG_FILE)} is missing and the checkpoints in {workdir} "
          "predate the config record in their meta, so this config cannot be checked against "
          "them. Restore config.json (or use a new --workdir).")
    log.warning("Restored the missing %s from checkpoint step %d.",
                storage.join(workdir, CONFIG_FILE), ckpt_step)
  _write_config(workdir, new)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (for sampling and evaluation): config.json, or the
  one recorded in its newest checkpoint when config.json is missing."""
  raw = read_recorded_config(workdir)
  if raw is None:
    step, raw = checkpoint_config(workdir)
    if raw is None:
      why = "" if step is None else ", and its checkpoints predate the config record in their meta"
      raise CheckpointError(f"No {CONFIG_FILE} in {workdir}{why}: is this a cm_jax training "
                            "workdir? Train one with `python -m cm_jax.train --workdir=...`.")
    log.warning("%s has no %s; using the config recorded in checkpoint step %d.", workdir,
                CONFIG_FILE, step)
  return ml_collections.ConfigDict(_tuples(_fill_missing(raw, _base_defaults())))


def _fill_missing(tree: dict, flat_defaults: dict[str, Any]) -> dict:
  """Adds the keys a workdir's config.json lacks (written by an older version) with defaults."""
  for key, value in flat_defaults.items():
    node, *path = tree, *key.split(".")
    for part in path[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(path[-1], value)
  return tree


def _tuples(tree):
  """JSON turns tuples into lists; configs use tuples for sequences."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def finished_steps(workdir: str) -> list[int]:
  """Ascending steps of the finished checkpoints. On a disk a save in progress has a suffixed
  name; on an object store Orbax writes STEP/ in place and commits it with a last marker file."""
  path = storage.join(workdir, CHECKPOINT_DIR)
  if not storage.isdir(path):
    return []
  steps = sorted(int(n) for n in storage.listdir(path) if n.isdigit())
  if storage.is_remote(path):
    steps = [s for s in steps if storage.exists(storage.join(path, str(s), COMMIT_MARKER))]
  return steps


def has_checkpoint(workdir: str) -> bool:
  return bool(finished_steps(workdir))


def first_line(e: BaseException, limit: int = 200) -> str:
  """The gist of a third-party error (Orbax and TensorStore errors run to dozens of lines)."""
  line = (str(e).strip().splitlines() or [""])[0]
  return line if len(line) <= limit else line[:limit] + "..."


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager for TrainState."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """read_only: for sampling and teachers (CD, ECT, sCD); nothing in the workdir is created,
    saved or deleted (a run may still be writing there)."""
    self.directory = storage.absolute(storage.join(workdir, CHECKPOINT_DIR))
    if read_only:  # the values read_only needs, so Orbax has nothing to override and warn about
      options = ocp.CheckpointManagerOptions(read_only=True, max_to_keep=None, create=False,
                                             save_interval_steps=0,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(storage.orbax_directory(self.directory), options=options,
                                         item_names=("state", META_ITEM))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, state, meta: dict) -> bool:
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state, step: Optional[int] = None):
    """Restores into the shardings and structure of `abstract_state` (from jax.eval_shape)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint in {self.directory}.")
    if step not in self.manager.all_steps():
      raise CheckpointError(f"No checkpoint for step {step} in {self.directory}; "
                            f"available: {self.all_steps()}.")
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                        meta=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for bad or foreign checkpoints
      raise CheckpointError(
          f"Could not restore step {step} from {self.directory} ({type(e).__name__}: "
          f"{first_line(e)}). The checkpoint is damaged or was written by another config.") from e
    return restored.state, restored.meta

  def restore_latest_good(self, abstract_state):
    """(state, meta) of the newest checkpoint that restores, or (None, None) when there is none.

    A newer checkpoint that fails to restore while an older one succeeds is damaged: it is moved
    aside (`corrupt-STEP-TIME`, kept for inspection) with a warning, so the run re-saves that step
    and the next resume does not trip on it again. When even the oldest fails, the newest's error
    is raised (more likely another config than damage) and nothing is moved.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None, None
    failures = []
    for step in steps:
      try:
        state, meta = self.restore(abstract_state, step)
      except CheckpointError as e:
        failures.append((step, e))
        cause = e.__cause__ or e
        log.warning("Checkpoint step %d in %s does not restore (%s: %s); trying the one before.",
                    step, self.directory, type(cause).__name__, first_line(cause))
        continue
      if failures:
        self._move_aside([s for s, _ in failures])
        log.warning("Resumed from step %d instead of the damaged step(s) %s, moved aside in %s.",
                    step, ", ".join(str(s) for s, _ in failures), self.directory)
      return state, meta
    raise failures[0][1]

  def _move_aside(self, steps: list[int]) -> None:
    """Renames damaged step directories out of Orbax's view (process 0; all processes sync)."""
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        src = storage.join(self.directory, str(step))
        dst, n = storage.join(self.directory, f"{CORRUPT_PREFIX}{step}-{stamp}"), 1
        while storage.exists(dst):
          dst, n = storage.join(self.directory, f"{CORRUPT_PREFIX}{step}-{stamp}-{n}"), n + 1
        if storage.isdir(src):
          storage.move_tree(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("cm_jax_checkpoint_move_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
