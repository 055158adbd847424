"""Orbax checkpoints of the train state: async, keep-N, automatic resume from the workdir.

A checkpoint step holds two items: `state` (params, EMA, target, optimizer, step, RNG) and `meta`
(JSON: the step, which is also the data position, and the method). The run's config lives in
`WORKDIR/config.json`, written once, so a resume with another config is refused before any work.

Every process of a multi-process run calls save and restore (Orbax writes each process's shards
and coordinates the commit). A save in progress lives in `STEP.orbax-checkpoint-tmp-*` and is
renamed to `STEP` only once complete, so a half-written checkpoint is never listed, never
resumed. A finished checkpoint damaged later (a file truncated or deleted by hand) fails to
restore: resume then warns, moves it aside to `corrupt-STEP-*` and takes the one before.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
CORRUPT_PREFIX = "corrupt-"

log = logging.getLogger("cm_jax")

# Keys that may differ on resume: they change when and how the run reports, not what it computes.
RUNTIME_KEYS = (
    "train.log_every", "train.save_every", "train.keep_checkpoints", "train.sample_every",
    "train.num_grid_samples", "data.data_dir", "data.num_workers", "eval.",
    "train.skip_nonfinite", "parallel.",  # the layout over devices, not the mathematics
    "model.remat",                        # memory against recomputation, same results
)


class CheckpointError(RuntimeError):
  """A checkpoint or workdir that cannot be used as asked; the message says what to do."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _base_defaults() -> dict[str, Any]:
  """Flattened defaults of configs/base.py: keys a later version added, which an older workdir's
  config.json lacks, take these values (they reproduce the older behaviour)."""
  from configs import base  # configs/ ships with the package
  return _flatten(_config_dict(base.get_base_config()))


def flat_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'a.b': value} with JSON values (tuples as lists), as config.json stores them."""
  return _flatten(_config_dict(config))


def check_or_write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json for a new run; for an existing run, refuses a different config."""
  path = os.path.join(workdir, CONFIG_FILE)
  new = _config_dict(config)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path} is unreadable ({e}); it records this workdir's config. "
                            "Restore it or use a new --workdir.") from None
    flat_old, flat_new = _flatten(old), _flatten(new)
    complete = set(flat_old) >= set(flat_new)
    for k, v in _base_defaults().items():
      flat_old.setdefault(k, v)
    differ = sorted(
        k for k in set(flat_old) | set(flat_new)
        if flat_old.get(k) != flat_new.get(k) and not k.startswith(RUNTIME_KEYS))
    if differ and has_checkpoint(workdir):
      details = "; ".join(f"{k}: {flat_old.get(k)!r} in the workdir, {flat_new.get(k)!r} now"
                          for k in differ[:8])
      raise CheckpointError(
          f"The workdir {workdir} holds a checkpoint of another config ({details}"
          f"{'; ...' if len(differ) > 8 else ''}). Use a new --workdir, or pass the same config "
          "to resume this run.")
    if not differ and complete:
      return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (for sampling and evaluation)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"No {CONFIG_FILE} in {workdir}: is this a cm_jax training workdir? "
                          "Train one with `python -m cm_jax.train --workdir=...`.")
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({e}).") from None
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


def has_checkpoint(workdir: str) -> bool:
  path = os.path.join(workdir, CHECKPOINT_DIR)
  return os.path.isdir(path) and any(n.isdigit() for n in os.listdir(path))


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager for TrainState."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """read_only: for sampling and the CD teacher; nothing in the workdir is created, saved or
    deleted (a run may still be writing there)."""
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if read_only:  # the values read_only needs, so Orbax has nothing to override and warn about
      options = ocp.CheckpointManagerOptions(read_only=True, max_to_keep=None, create=False,
                                             save_interval_steps=0,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

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
          f"Could not restore step {step} from {self.directory}: {type(e).__name__}: {e}. "
          "The checkpoint is damaged or was written by another config.") from e
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
        first_line = (str(cause).strip().splitlines() or [""])[0][:200]
        log.warning("Checkpoint step %d in %s does not restore (%s: %s); trying the one before.",
                    step, self.directory, type(cause).__name__, first_line)
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
        src = os.path.join(self.directory, str(step))
        dst, n = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}-{stamp}"), 1
        while os.path.exists(dst):
          dst, n = os.path.join(self.directory, f"{CORRUPT_PREFIX}{step}-{stamp}-{n}"), n + 1
        if os.path.isdir(src):
          os.replace(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("cm_jax_checkpoint_move_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
