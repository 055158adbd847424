"""MeanFlow end to end through the real CLIs: digits and CIFAR-10 runlocal training, sampling at
times (1 and 2 steps, explicit --times), the Python API agreeing with the sample CLI, editing on
the flow map's consistency function, and clear errors for sigma flags."""
import numpy as np
import pytest

import cm_jax
from cm_jax import editing
from cm_jax.data import fake
from tests.cli_runner import run_cli, sample, train

pytestmark = pytest.mark.slow  # trains and launches processes


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("meanflow")
  out = train(root / "w", "configs/digits.py:method=meanflow,runlocal")
  assert "Training meanflow on digits" in out.stdout + out.stderr
  assert "2-step" in out.stdout  # the end-of-run report scores 1 and 2 steps
  return root / "w"


def test_sample_cli_uses_times_and_matches_the_python_api(workdir, tmp_path):
  out = sample(workdir, "--steps=2", "--num_samples=6", f"--out={tmp_path}/two.npz")
  assert "at times [1.0, 0.5]" in out.stdout, out.stdout
  two = np.load(tmp_path / "two.npz")
  assert two["arr_0"].shape == (6, 16, 16, 1) and two["arr_1"].shape == (6,)
  m = cm_jax.load(str(workdir))
  np.testing.assert_array_equal(m.sample(6, steps=2), two["arr_0"])
  assert m.plan(steps=3) == pytest.approx([1.0, 2 / 3, 1 / 3])
  out = sample(workdir, "--times=1,0.6,0.3", "--num_samples=4", f"--out={tmp_path}/three.npz")
  assert "at times [1.0, 0.6, 0.3]" in out.stdout
  # The flow map's consistency function in sigma: denoising runs on it.
  clean = m.denoise(two["arr_0"], sigma=0.5)
  assert clean.shape == (6, 16, 16, 1) and np.all(np.abs(clean) <= 1)


def test_sigma_flags_are_refused_with_what_to_use(workdir, tmp_path):
  out = sample(workdir, "--sigmas=80,2.5", f"--out={tmp_path}/x.npz", check=False)
  assert out.returncode == 2 and "use --steps or --times, not --sigmas" in out.stderr
  assert "time t in [0, 1]" in out.stderr and "Traceback" not in out.stderr
  out = sample(workdir, "--times=1.5", f"--out={tmp_path}/x.npz", check=False)
  assert out.returncode == 2 and "must lie in (0, 1]" in out.stderr
  out = run_cli("cm_jax.evaluate", f"--workdir={workdir}", "--search_ts", "--ref=x.npz",
                check=False)
  assert out.returncode == 2 and "sampled at times" in out.stderr, out.stderr[-2000:]


def test_inpainting_edits_with_the_flow_consistency_function(workdir, tmp_path):
  digits = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
  np.savez(tmp_path / "images.npz", arr_0=digits)
  out = run_cli("cm_jax.edit", f"--workdir={workdir}", "--task=inpaint",
                f"--images={tmp_path}/images.npz", "--mask=center", "--sigmas=80,1.0",
                "--labels=3", f"--out={tmp_path}/in.npz")
  assert "Wrote 3 inpaint results" in out.stdout
  edited = np.load(tmp_path / "in.npz")["arr_0"]
  keep = np.broadcast_to(editing.center_mask(16, 16) == 0, digits.shape)
  np.testing.assert_array_equal(edited[keep], digits[keep])


def test_cifar10_meanflow_runlocal_trains_through_the_cli(tmp_path):
  """The paper's CIFAR-10 row shrunk: NCSN++ with two Fourier time inputs, the jvp through its
  FIR resampling and attention, Adam with warm-up."""
  data_dir = str(tmp_path / "tfds")
  fake.prepare_fake("cifar10", data_dir, num_examples=16)
  out = train(tmp_path / "c10", "configs/cifar10.py:method=meanflow,runlocal",
              f"--config.data.data_dir={data_dir}", "--config.train.num_steps=2",
              "--config.eval.report_at_end=False")
  log = out.stdout + out.stderr
  assert "Training meanflow on cifar10" in log and "step 2/2" in log, log[-2000:]
