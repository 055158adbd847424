"""EDM teacher -> CD student -> samples through the real CLIs; the teacher is never written to;
missing, foreign, mismatched or half-written teachers are clear errors before any training."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cm_jax import checkpoint, parallel
from cm_jax.train import restore, teacher as teacher_lib
from configs import digits
from tests.cli_runner import assert_user_error, sample, snapshot, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

EDM = "configs/digits.py:method=edm,runlocal"
CD = "configs/digits.py:method=cd,runlocal"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  teacher, student = root / "edm", root / "cd"
  out_teacher = train(teacher, EDM)
  before = snapshot(teacher)
  out_student = train(student, CD, f"--config.teacher={teacher}",
                      "--config.eval.report_at_end=False")  # the same report as CT's
  return teacher, student, before, out_teacher, out_student


def test_teacher_is_scored_with_heun_and_never_written(runs):
  teacher, student, before, out_teacher, out_student = runs
  assert "heun-18" in out_teacher.stdout
  scores = json.loads((teacher / "eval" / "digits_quality_step0000004.json").read_text())
  assert scores["heun-18"]["nfe"] == 35 and np.isfinite(scores["heun-18"]["frechet"])
  assert (teacher / "samples" / "final_heun18_step0000004.png").exists()
  # The CD run read the teacher: every file is still there, bit for bit, and nothing was added.
  assert snapshot(teacher) == before
  assert f"Teacher: {teacher}, step 4" in out_student.stderr


def test_student_records_and_starts_from_its_teacher(runs):
  teacher, student, _, _, _ = runs
  config = checkpoint.load_config(str(student))
  teacher_config = teacher_lib.check(config)
  mesh = parallel.create_mesh()
  loaded = teacher_lib.load(config, teacher_config, mesh)
  exp, _, meta = restore.restore_state(str(student), config, mesh=mesh)
  assert loaded.step == 4 and loaded.workdir == str(teacher) and meta["teacher"] == loaded.meta
  # Online from the teacher's online weights, the evaluation EMA from its EMA, copied (the
  # student's state is donated to the train step; the teacher's arrays must survive it).
  state = teacher_lib.init_student(exp, 0, loaded)
  for ours, theirs in ((state.params, loaded.params), (state.ema_params, loaded.ema_params)):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()
  # A resume must find the very teacher it started from.
  with pytest.raises(checkpoint.CheckpointError, match="other weights"):
    teacher_lib.load(config, teacher_config, mesh, {**loaded.meta, "fingerprint": "0" * 16})
  with pytest.raises(checkpoint.CheckpointError, match="distilled from step 3"):
    teacher_lib.load(config, teacher_config, mesh, {**loaded.meta, "step": 3})


def test_a_teacher_in_a_bucket_loads_as_its_local_copy(runs, gcs):
  """--config.teacher=gs://...: checked and restored through the same layer as a gs:// resume."""
  from tests.helpers.gcs_emulator import upload_tree
  teacher, student, _, _, _ = runs
  upload_tree(str(teacher), f"{gcs}/teacher")
  config = checkpoint.load_config(str(student))
  mesh = parallel.create_mesh()
  local = teacher_lib.load(config, teacher_lib.check(config), mesh)
  config.teacher = f"{gcs}/teacher"
  remote = teacher_lib.load(config, teacher_lib.check(config), mesh)
  assert remote.workdir == f"{gcs}/teacher" and remote.step == local.step == 4
  assert remote.fingerprint == local.fingerprint


def test_sample_cli_on_edm_and_cd_workdirs(runs, tmp_path):
  teacher, student, _, _, _ = runs
  out = sample(teacher, "--num_samples=3", f"--out={tmp_path}/heun.npz")
  assert "heun over 18 levels (35 evaluations)" in out.stdout
  heun = np.load(tmp_path / "heun.npz")["arr_0"]
  assert heun.shape == (3, 16, 16, 1) and heun.dtype == np.uint8
  sample(teacher, "--num_samples=3", "--edm_solver=euler", "--edm_levels=6",
         f"--out={tmp_path}/euler.npz")
  assert np.load(tmp_path / "euler.npz")["arr_0"].shape == heun.shape
  sample(student, "--steps=1", "--num_samples=3", f"--out={tmp_path}/cd.npz")
  assert_user_error(sample(teacher, "--steps=1", f"--out={tmp_path}/x.npz", check=False),
         "EDM denoiser", "--edm_levels")
  assert_user_error(sample(student, "--edm_levels=18", f"--out={tmp_path}/x.npz", check=False),
         "are for EDM workdirs")


def test_bad_teachers_are_clear_errors_before_training(runs, tmp_path):
  teacher, student, _, _, _ = runs
  half = tmp_path / "half"  # a teacher whose only save never finished
  shutil.copytree(teacher, half)
  shutil.rmtree(half / "checkpoints" / "2")
  os.rename(half / "checkpoints" / "4", half / "checkpoints" / "4.orbax-checkpoint-tmp-0")
  cases = [
      (CD, (), "needs an EDM teacher"),
      (CD, (f"--config.teacher={tmp_path / 'nowhere'}",), "does not exist"),
      (CD, (f"--config.teacher={student}",), "is a method=cd run"),
      (CD, (f"--config.teacher={teacher}", "--config.model.channels=8"), "model.channels:"),
      (CD, (f"--config.teacher={half}",), "no finished checkpoint"),
      ("configs/digits.py:method=ict,runlocal", (f"--config.teacher={teacher}",),
       "does not use a teacher"),
  ]
  for i, (config, overrides, message) in enumerate(cases):
    workdir = tmp_path / f"w{i}"
    assert_user_error(train(workdir, config, *overrides, check=False), message)
    assert not os.path.exists(workdir / "checkpoints")
    assert not os.path.exists(workdir / "config.json")


def test_digits_configs_for_edm_and_cd():
  edm, cd = digits.get_config("method=edm"), digits.get_config("method=cd")
  assert edm.model == cd.model and cd.distill.num_levels == 18 and cd.distill.solver == "heun"
  assert cd.teacher == "" and cd.consistency.distance == "pseudo_huber"
  assert cd.distill.weighting == "inverse_gap"  # iCT's loss: the digits recipe (README)
