"""Read-only restores of a training workdir: for sampling, evaluation and teachers (CD, ECT, sCD).

Nothing in the workdir is written, so a run may still be training there.
"""
from __future__ import annotations

import copy
from typing import Optional

import ml_collections
from jax.sharding import Mesh

from cm_jax import checkpoint, storage
from cm_jax.errors import MissingPath
from cm_jax.train.experiment import Experiment
from cm_jax.train.state import TrainState


def workdir_config(workdir: str, what: str = "--workdir") -> ml_collections.ConfigDict:
  """The config a workdir was trained with; `what` names the workdir in errors."""
  storage.check(workdir, what)
  if not storage.exists(workdir):
    raise MissingPath(f"{what} {workdir} does not exist.")
  if not storage.isdir(workdir):
    raise MissingPath(f"{what} {workdir} is a file, not a training workdir (a directory with "
                      "config.json and checkpoints/).")
  return checkpoint.load_config(workdir)


def without_training_distance(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with an LPIPS training distance replaced by l2 (a copy): what is restored
  read-only never evaluates the training loss, so it must not need the converted VGG16 weights
  (an imported CD-LPIPS release, or a run trained on another machine, samples without them)."""
  if config.get("consistency") is None or config.consistency.get("distance") != "lpips":
    return config
  config = copy.deepcopy(config)
  config.consistency.distance = "l2"
  return config


def restore_state(workdir: str, config: ml_collections.ConfigDict, step: Optional[int] = None,
                  mesh: Optional[Mesh] = None) -> tuple[Experiment, TrainState, dict]:
  """(experiment, state, meta) of checkpoint `step` (None = the latest) of a workdir."""
  exp = Experiment.from_config(without_training_distance(config), mesh)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise checkpoint.CheckpointError(
          f"{workdir} holds no finished checkpoint yet ({ckpt.directory}); a first save may "
          "still be in progress.")
    wanted = ckpt.latest_step() if step is None else step
    try:
      state, meta = ckpt.restore(exp.abstract_state(), wanted)
    except checkpoint.CheckpointError as e:
      others = [s for s in ckpt.all_steps() if s != wanted]
      if e.__cause__ is None or not others:  # no such step, or nothing else to offer
        raise
      raise checkpoint.CheckpointError(
          f"{e} Other checkpoints: {others}; pick one with --checkpoint=STEP.") from e.__cause__
  finally:
    ckpt.close()
  return exp, state, meta
