"""`cm_jax.load` (cm_jax/api.py): a workdir from Python gives the CLIs' samples."""
import numpy as np
import pytest

import cm_jax
from cm_jax.errors import UserError
from cm_jax.train import loop
from configs import digits
from tests.cli_runner import run_cli

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  w = tmp_path_factory.mktemp("api") / "ict"
  config = digits.get_config("method=ict,runlocal")
  config.eval.report_at_end = False
  loop.train_and_evaluate(config, str(w))
  return w


def test_sample_equals_the_sample_cli(workdir, tmp_path):
  m = cm_jax.load(str(workdir))
  assert isinstance(m, cm_jax.Model) and m.step == 4 and m.num_classes == 10
  mine = m.sample(6, steps=2, seed=3, batch_size=4)
  assert mine.shape == (6, 16, 16, 1) and mine.dtype == np.uint8
  run_cli("cm_jax.sample", f"--workdir={workdir}", "--steps=2", "--seed=3", "--num_samples=6",
          f"--out={tmp_path}/s.npz")
  np.testing.assert_array_equal(mine, np.load(tmp_path / "s.npz")["arr_0"])
  assert m.plan(steps=2) == [80.0, 2.5]  # the digits iCT config's 2-step level
  np.testing.assert_array_equal(m.sample(6, sigmas=[80.0, 2.5], seed=3), mine)


def test_denoise_labels_and_evaluate(workdir):
  m = cm_jax.load(str(workdir), checkpoint=2, params="online")
  assert m.step == 2
  noisy = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
  out = m.denoise(noisy, sigma=0.5, labels=[1, 2, 3])
  assert out.shape == noisy.shape and out.dtype == np.float32 and np.abs(out).max() <= 1.0
  threes = m.sample(2, labels=3)
  assert threes.shape == (2, 16, 16, 1)
  scores = m.evaluate(num_samples=32)
  assert set(scores) == {"1-step", "2-step"} and scores["1-step"]["num_samples"] == 32


def test_mistakes_are_user_errors(workdir):
  with pytest.raises(UserError, match="'ema' or 'online'"):
    cm_jax.load(str(workdir), params="target")
  with pytest.raises(UserError, match="'latest' or a step"):
    cm_jax.load(str(workdir), checkpoint="last")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    cm_jax.load(str(workdir) + "_missing")
  m = cm_jax.load(str(workdir))
  with pytest.raises(UserError, match="steps or sigmas"):
    m.sample(2, steps=1, sigmas=[80.0])
  with pytest.raises(UserError, match="must lie in"):
    m.denoise(np.zeros((1, 16, 16, 1), np.float32), sigma=100.0)
  with pytest.raises(UserError, match=r"Images must be \[N, 16, 16, 1\]"):
    m.denoise(np.zeros((1, 8, 8, 1), np.float32), sigma=0.5)


def test_edit_equals_the_edit_cli(workdir, tmp_path):
  m = cm_jax.load(str(workdir))
  images = m.sample(4, seed=7)  # any uint8 images at the model's size
  np.savez(tmp_path / "in.npz", arr_0=images, arr_1=np.arange(4))  # the CLI reads arr_1 labels
  mine = m.edit(images, "inpaint", steps=2, labels=[0, 1, 2, 3], seed=5, mask="strokes")
  assert mine.shape == images.shape and mine.dtype == np.uint8
  run_cli("cm_jax.edit", f"--workdir={workdir}", "--task=inpaint", f"--images={tmp_path}/in.npz",
          "--steps=2", "--seed=5", "--mask=strokes", f"--out={tmp_path}/e.npz")
  np.testing.assert_array_equal(mine, np.load(tmp_path / "e.npz")["arr_0"])
  assert m.edit(images, "denoise", noise_sigma=0.5, labels=1).shape == images.shape
  with pytest.raises(UserError, match="--noise_sigma is for --task=denoise only"):
    m.edit(images, "inpaint", noise_sigma=0.5)
  with pytest.raises(UserError, match="takes no steps or sigmas"):
    m.edit(images, "denoise", steps=1, noise_sigma=0.5)
