"""A workdir is never lost or mislabelled: one writer at a time (real processes), the config
checked against the checkpoints' own record even when config.json is gone, nothing written by a
refused run, distinct exit statuses."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from cm_jax import checkpoint, workdir_lock
from tests import REPO_ROOT, subprocess_env
from tests.cli_runner import assert_user_error, run_cli, sample, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

ICT = "configs/digits.py:method=ict,runlocal"
CT = "configs/digits.py:method=ct,runlocal"


def _listing(root):
  return sorted(os.path.relpath(os.path.join(d, f), root)
                for d, _, files in os.walk(root) for f in files)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("safety") / "ict"
  train(workdir, ICT, "--config.eval.report_at_end=False")
  return workdir


def test_second_training_on_a_busy_workdir_is_refused_at_once(tmp_path):
  workdir = tmp_path / "busy"
  first = subprocess.Popen(
      [sys.executable, "-m", "cm_jax.train", f"--config={ICT}", f"--workdir={workdir}",
       "--config.train.num_steps=150", "--config.train.save_every=50",
       "--config.eval.report_at_end=False"],
      cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  try:
    deadline = time.time() + 240
    while not (workdir / workdir_lock.LOCK_FILE).exists():
      assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
      time.sleep(0.1)
    holder = json.loads((workdir / workdir_lock.LOCK_FILE).read_text())
    for config in (CT, ICT):  # another config, and the same one: both would interleave saves
      assert_user_error(train(workdir, config, check=False), "is in use by",
               f"pid {holder['pid']} on {holder['host']}")
    log, _ = first.communicate(timeout=600)
  finally:
    first.kill()
  assert first.returncode == 0, log[-3000:]
  assert json.loads((workdir / "config.json").read_text())["method"] == "ict"
  assert sorted(os.listdir(workdir / "checkpoints")) == ["100", "150", "50"]
  assert checkpoint.checkpoint_config(str(workdir))[1]["method"] == "ict"
  assert not (workdir / workdir_lock.LOCK_FILE).exists()  # released at the end
  assert len(os.listdir(workdir / "tensorboard")) == 1  # one writer's events only


def test_stale_lock_of_a_killed_run_is_taken_over(finished, tmp_path):
  workdir = tmp_path / "stale"
  shutil.copytree(finished, workdir)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(
      {"host": os.uname().nodename, "pid": dead.pid, "started": "earlier", "token": "x"}))
  out = train(workdir, ICT, "--config.eval.report_at_end=False")
  assert "Took over the lock" in out.stderr and "no longer running" in out.stderr
  assert "already complete" in out.stderr and not (workdir / workdir_lock.LOCK_FILE).exists()


def test_deleted_config_json_cannot_let_another_config_resume(finished, tmp_path):
  workdir = tmp_path / "copy"
  shutil.copytree(finished, workdir)
  os.remove(workdir / "config.json")
  before = _listing(workdir)
  assert_user_error(train(workdir, ICT, "--config.consistency.s1=40", "--config.model.dropout=0.3",
                 "--config.train.num_steps=6", check=False),
           "holds a checkpoint (step 4) of another config", "consistency.s1: 160",
           "model.dropout")
  assert_user_error(train(workdir, CT, check=False), "another config", "method: 'ict' in the workdir")
  assert _listing(workdir) == before  # nothing written, config.json not recreated
  # Sampling reads the config from the checkpoint meta meanwhile.
  out = sample(workdir, "--num_samples=2", f"--out={tmp_path}/s.npz")
  assert "using the config recorded in checkpoint step 4" in out.stderr
  out = train(workdir, ICT, "--config.eval.report_at_end=False")  # the right command
  assert "Restored the missing" in out.stderr and "already complete" in out.stderr
  assert json.load(open(workdir / "config.json")) == json.load(open(finished / "config.json"))


def test_edited_config_json_is_caught_by_the_checkpoint_record(finished, tmp_path):
  workdir = tmp_path / "edited"
  shutil.copytree(finished, workdir)
  record = json.loads((workdir / "config.json").read_text())
  record["consistency"]["s1"] = 40
  (workdir / "config.json").write_text(json.dumps(record))
  assert_user_error(train(workdir, ICT, "--config.consistency.s1=40", check=False),
           "holds a checkpoint (step 4) of another config", "consistency.s1: 160")


def test_rejected_new_run_leaves_no_workdir(tmp_path):
  workdir = tmp_path / "never"
  assert_user_error(train(workdir, ICT, "--config.train.batch_size=0", check=False), "train.batch_size=0")
  assert not workdir.exists()


def test_finished_run_says_it_is_complete_and_writes_nothing(finished):
  before = _listing(finished)
  out = train(finished, ICT, "--config.eval.report_at_end=False")
  assert "already complete: checkpoint step 4, train.num_steps=4" in out.stderr
  assert _listing(finished) == before


def test_debug_flag_shows_the_traceback_of_a_user_error(finished, tmp_path):
  out = run_cli("cm_jax.sample", f"--workdir={finished}", "--steps=0", f"--out={tmp_path}/x.npz",
                "--debug", check=False)
  assert out.returncode == 2 and "Traceback" in out.stderr and "error: --steps=0" in out.stderr
