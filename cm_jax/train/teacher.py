"""The teacher workdir of CD, ECT, sCD (and CT given one), checked against the student, then
restored read-only.

The student names its teacher by workdir (`config.teacher`): an EDM run for CD, ECT and CT, a
TrigFlow run for sCD (the MethodSpec's `teacher_method`). Before anything is written or trained,
the workdir must exist, hold a run of that method with the student's data shape, noise levels and
network (dropout aside: the student starts from the teacher's weights) and a finished checkpoint.
CD and sCD query the teacher's EMA in their loss; ECT and CT only start from its weights. The
teacher's step and a fingerprint of its EMA weights go into every student checkpoint, so a
resume uses the very same teacher or refuses to start.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from cm_jax import checkpoint, methods, parallel, storage
from cm_jax.errors import UserError
from cm_jax.train import restore
from cm_jax.train.experiment import Experiment
from cm_jax.train.state import TrainState

log = logging.getLogger("cm_jax")

# Config keys the student must share with its teacher, and the exceptions: dropout has no weights
# and the teacher runs in eval mode; the compute dtype and remat change no weight, so a float32
# imported teacher serves a bfloat16 student (its weights then run in the student's dtype).
_MUST_MATCH = ("data.name", "data.resolution", "data.channels", "data.num_classes", "karras.",
               "model.", "scm.time_scale", "scm.adaptive_weight", "scm.weight_hidden")
_MAY_DIFFER = ("model.dropout", "model.dtype", "model.remat")
_WHAT = "The teacher workdir (--config.teacher)"
_ARTICLES = {"edm": "an EDM", "trigflow": "a TrigFlow"}


def _teacher_method(config) -> str:
  """The method a teacher workdir of this run must hold (EDM for a CT run given one)."""
  return methods.spec(config.method).teacher_method or "edm"


@dataclasses.dataclass(frozen=True)
class Teacher:
  workdir: str        # absolute
  step: int
  params: Any         # online weights: where the student's online network starts
  ema_params: Any     # the weights the loss queries (`frozen` of the train step)
  fingerprint: str    # of ema_params

  @property
  def meta(self) -> dict:
    """What a student checkpoint records about its teacher."""
    return {"workdir": self.workdir, "step": self.step, "fingerprint": self.fingerprint}


def fingerprint(tree) -> str:
  """A hash of the leaves' bytes: tells whether two restores hold the same weights exactly."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
  return h.hexdigest()[:16]


def check_compatible(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict,
                     workdir: str) -> None:
  want = _teacher_method(config)
  if teacher_config.method != want:
    raise UserError(
        f"The teacher {workdir} is a method={teacher_config.method} run; method={config.method} "
        f"starts from a method={want} run. Train one with `python -m cm_jax.train "
        f"--config=configs/<dataset>.py:method={want} --workdir=TEACHER` and pass "
        "--config.teacher=TEACHER.")
  student, teacher = checkpoint.flat_config(config), checkpoint.flat_config(teacher_config)
  differ = sorted(k for k in set(student) | set(teacher)
                  if k.startswith(_MUST_MATCH) and not k.startswith(_MAY_DIFFER)
                  and student.get(k) != teacher.get(k))
  if differ:
    details = "; ".join(f"{k}: {teacher.get(k)!r} in the teacher, {student.get(k)!r} now"
                        for k in differ)
    raise UserError(
        f"The student must have the data shape, noise levels and network of its teacher {workdir} "
        f"(it starts from the teacher's weights): {details}. Pass the teacher's values, e.g. "
        f"--config.{differ[0]}={teacher.get(differ[0])}, or train a matching teacher.")


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Validates config.teacher without restoring it; returns the teacher's config."""
  path = str(config.teacher)
  want = _teacher_method(config)
  if not path:
    raise UserError(
        f"method={config.method} needs {_ARTICLES.get(want, 'a ' + want)} teacher: "
        "--config.teacher=TEACHER_WORKDIR, trained with `python -m cm_jax.train "
        f"--config=configs/<dataset>.py:method={want} --workdir=TEACHER_WORKDIR`.")
  teacher_config = restore.workdir_config(path, _WHAT)
  check_compatible(config, teacher_config, path)
  if not checkpoint.has_checkpoint(path):
    raise checkpoint.CheckpointError(
        f"The teacher {path} holds no finished checkpoint yet; let its training save one "
        "(train.save_every, or the end of the run) first.")
  return teacher_config


def load(config: ml_collections.ConfigDict, teacher_config: ml_collections.ConfigDict, mesh: Mesh,
         recorded: Optional[dict] = None) -> Teacher:
  """Restores the teacher: its latest checkpoint, or for a resume the one `recorded` in the
  student's checkpoint (refusing other weights than the ones the run started with)."""
  path = str(config.teacher)
  step = None if recorded is None else int(recorded["step"])
  try:
    _, state, _ = restore.restore_state(path, teacher_config, step, mesh)
  except checkpoint.CheckpointError as e:
    again = "" if recorded is None else (
        f" This run was distilled from step {step} of the teacher {recorded['workdir']}; put "
        "that checkpoint back to resume, or start a new --workdir.")
    raise checkpoint.CheckpointError(f"{_WHAT}: {e}{again}") from e
  teacher = Teacher(workdir=storage.absolute(path), step=int(state.step), params=state.params,
                    ema_params=state.ema_params, fingerprint=fingerprint(state.ema_params))
  if recorded is not None and teacher.fingerprint != recorded["fingerprint"]:
    raise checkpoint.CheckpointError(
        f"This run was distilled from step {step} of the teacher {recorded['workdir']} (weights "
        f"{recorded['fingerprint']}), but {path} now holds other weights at that step "
        f"({teacher.fingerprint}). Put the original teacher back, or start a new --workdir.")
  total = int(teacher_config.train.num_steps)
  if teacher.step < total:
    log.warning("The teacher %s is at step %d of its %d: distilling from that checkpoint.",
                path, teacher.step, total)
  log.info("Teacher: %s, step %d, EMA weights %s.", teacher.workdir, teacher.step,
           teacher.fingerprint)
  return teacher


def init_student(exp: Experiment, seed: int, teacher: Teacher) -> TrainState:
  """CM's CD start, used for every method given a teacher: online = the teacher's online
  weights, evaluation EMA = the teacher's EMA, target = online. Copies, because the student's
  state is donated to the step and the teacher must stay intact."""
  def start(state, params, ema_params):
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    target = None if state.target_params is None else copy(params)
    return state.replace(params=copy(params), ema_params=copy(ema_params), target_params=target,
                         opt_state=exp.tx.init(params))
  start = jax.jit(start, out_shardings=parallel.replicated(exp.mesh), donate_argnums=0)
  return start(exp.init_state(seed), teacher.params, teacher.ema_params)
