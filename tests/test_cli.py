"""The train and sample CLIs end to end, and the clear errors for bad input."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.cli_runner import assert_user_error, sample, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("cli") / "ict"
  # Each batch of 16 as 2 micro-batches: train.grad_accum through the CLI and the loop.
  out = train(workdir, "configs/digits.py:method=ict,runlocal", "--config.train.grad_accum=2")
  return workdir, out


def test_train_writes_checkpoint_grids_and_scores(trained):
  workdir, out = trained
  assert "Checkpoint:" in out.stdout and "Frechet" in out.stdout
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert json.loads((workdir / "config.json").read_text())["train"]["grad_accum"] == 2
  assert any(f.startswith("events") for f in os.listdir(workdir / "tensorboard"))
  assert (workdir / "samples" / "final_1step_2step_step0000004.png").exists()
  scores = json.loads((workdir / "eval" / "digits_quality_step0000004.json").read_text())
  for plan in ("1-step", "2-step"):
    assert scores[plan]["num_samples"] == 64
    assert np.isfinite(scores[plan]["frechet"]) and scores[plan]["frechet_real"] > 0


def test_sample_cli_one_two_and_ts(trained, tmp_path):
  workdir, _ = trained
  out = sample(workdir, "--steps=1", "--num_samples=5", f"--out={tmp_path}/one.npz",
               f"--grid={tmp_path}/one.png")
  one = np.load(tmp_path / "one.npz")["arr_0"]
  assert one.shape == (5, 16, 16, 1) and one.dtype == np.uint8
  assert (tmp_path / "one.png").exists() and "step 4" in out.stdout
  sample(workdir, "--sigmas=80,2.5", "--num_samples=5", "--batch_size=2",
         f"--out={tmp_path}/two.npz")
  two = np.load(tmp_path / "two.npz")["arr_0"]
  out = sample(workdir, "--ts=0,11,17", "--ts_grid=18", "--num_samples=5",
               f"--out={tmp_path}/ts.npz")
  assert two.shape == one.shape and "[80.0, " in out.stdout
  # Sample i depends on the seed and i only: the first 3 of 5 equal 3 drawn alone.
  sample(workdir, "--steps=1", "--num_samples=3", "--batch_size=1", f"--out={tmp_path}/three.npz")
  np.testing.assert_array_equal(np.load(tmp_path / "three.npz")["arr_0"], one[:3])


def test_bad_config_inputs_are_clear_errors(tmp_path):
  assert_user_error(train(tmp_path / "a", "configs/digits.py:method=ict,runlocal", "--config.train.nope=1",
               check=False), "unknown config key", "nope")
  assert_user_error(train(tmp_path / "b", "configs/digits.py:method=foo,runlocal", check=False),
         "Unknown method 'foo'")
  assert_user_error(train(tmp_path / "c", "configs/digits.py:method=ict,runlocal", "--config.data.name=mnist",
               check=False), "Unknown dataset 'mnist'")
  assert_user_error(train(tmp_path / "d", "configs/digits.py:method=ict,runlocal",
               "--config.train.batch_size=12", devices=8, check=False),
         "not divisible by the 8 devices")
  assert not os.path.exists(tmp_path / "d" / "checkpoints")
  assert_user_error(train(tmp_path / "e", "configs/digits.py:method=ict,runlocal",
               "--config.train.grad_accum=3", check=False),
         "does not split into train.grad_accum=3 micro-batches")


def test_workdir_of_another_config_is_refused_and_kept(trained):
  workdir, _ = trained
  before = sorted(os.listdir(workdir / "checkpoints"))
  assert_user_error(train(workdir, "configs/digits.py:method=ct,runlocal", check=False),
         "holds a checkpoint (step 4) of another config", "method")
  assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_sample_missing_or_unreadable_checkpoint(trained, tmp_path):
  workdir, _ = trained
  assert_user_error(sample(tmp_path / "nowhere", f"--out={tmp_path}/x.npz", check=False), "does not exist")
  (tmp_path / "empty").mkdir()
  assert_user_error(sample(tmp_path / "empty", f"--out={tmp_path}/x.npz", check=False), "config.json")
  assert_user_error(sample(workdir, "--checkpoint=3", f"--out={tmp_path}/x.npz", check=False),
         "No checkpoint for step 3")
  broken = tmp_path / "broken"
  shutil.copytree(workdir, broken)
  for root, _, files in os.walk(broken / "checkpoints" / "4" / "state"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  assert_user_error(sample(broken, "--checkpoint=4", f"--out={tmp_path}/x.npz", check=False),
         "Could not restore step 4")
  assert not (tmp_path / "x.npz").exists()
