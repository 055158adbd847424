"""Read-only restores of a training workdir: for sampling, evaluation and the CD teacher.

Nothing in the workdir is written, so a run may still be training there.
"""
from __future__ import annotations

import os
from typing import Optional

import ml_collections
from jax.sharding import Mesh

from cm_jax import checkpoint
from cm_jax.train.experiment import Experiment
from cm_jax.train.state import TrainState


def workdir_config(workdir: str, what: str = "--workdir") -> ml_collections.ConfigDict:
  """The config a workdir was trained with; `what` names the workdir in errors."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{what} {workdir} does not exist.")
  return checkpoint.load_config(workdir)


def restore_state(workdir: str, config: ml_collections.ConfigDict, step: Optional[int] = None,
                  mesh: Optional[Mesh] = None) -> tuple[Experiment, TrainState, dict]:
  """(experiment, state, meta) of checkpoint `step` (None = the latest) of a workdir."""
  exp = Experiment.from_config(config, mesh)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise checkpoint.CheckpointError(
          f"{workdir} holds no finished checkpoint yet ({ckpt.directory}); a first save may "
          "still be in progress.")
    state, meta = ckpt.restore(exp.abstract_state(), step)
  finally:
    ckpt.close()
  return exp, state, meta
