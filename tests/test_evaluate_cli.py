"""`python -m cm_jax.evaluate` end to end, in subprocesses: a sample file on 1, 2 and 8 devices,
a workdir evaluation that is interrupted and resumed, the 2-step ternary search feeding
`cm_jax.sample`, and the errors of bad inputs."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cm_jax import checkpoint
from cm_jax import weight_store
from cm_jax.evaluation import inception
from tests.cli_runner import run_cli

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


def random_inception(path: str, seed: int = 0) -> str:
  """A converted-Inception directory with He-normal random weights (no torch needed)."""
  rng = np.random.default_rng(seed)

  def draw(kp, leaf):
    name = jax.tree_util.keystr(kp)
    if name.endswith("['kernel']"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    fill = 1.0 if name.endswith(("['scale']", "['var']")) else 0.0
    return np.full(leaf.shape, fill, np.float32)

  params = jax.tree_util.tree_map_with_path(draw, inception.param_template())
  weight_store.save(path, params, {"kind": inception.KIND, "source": "random (tests)"})
  return path


def smooth_uint8(n: int, size: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 255, (n, 4, 4, 3))
  x = np.kron(coarse, np.ones((1, size // 4, size // 4, 1)))
  return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A digits workdir with one (untrained, randomly initialised) checkpoint at step 0."""
  from configs import digits
  from cm_jax.train.experiment import Experiment
  wd = str(tmp_path_factory.mktemp("evaluate") / "ict")
  config = digits.get_config("method=ict,runlocal")
  checkpoint.check_or_write_config(wd, config)
  exp = Experiment.from_config(config)
  ckpt = checkpoint.Checkpointer(wd, async_save=False)
  ckpt.save(exp.init_state(0), {"step": 0, "data_position": 0, "method": "ict",
                                "skipped_steps": 0})
  ckpt.close()
  return wd


def test_sample_file_gives_the_same_fid_on_1_2_and_8_devices(tmp_path):
  weights = random_inception(str(tmp_path / "inception"))
  samples, ref = tmp_path / "s.npz", tmp_path / "r.npz"
  np.savez(samples, arr_0=smooth_uint8(6, 32, 0))  # one batch of 8, padded
  rng = np.random.default_rng(0)  # full-rank reference statistics (only the samples run)
  a = rng.standard_normal((2048, 2048)) / 45.0
  np.savez(ref, mu=rng.standard_normal(2048) * 0.1, sigma=a @ a.T)
  results = {}
  for devices in (1, 2, 8):
    out = tmp_path / f"out{devices}.json"
    run_cli("cm_jax.evaluate", f"--samples={samples}", f"--ref={ref}",
            f"--inception_weights={weights}", f"--json={out}", "--batch_size=8",
            devices=devices)
    results[devices] = json.loads(out.read_text())
    assert results[devices]["devices"] == devices
  first = results[1]
  assert first["num_samples"] == 6 and np.isfinite(first["fid"]) and first["fid"] > 0
  for devices in (2, 8):
    assert results[devices]["fid"] == pytest.approx(first["fid"], rel=1e-6)
    assert np.isnan(results[devices]["is_mean"])  # IS needs >= 10 samples (10 splits)


def _rows(wd):
  with open(os.path.join(wd, "eval", "results.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_workdir_evaluation_resumes_where_it_stopped(workdir, tmp_path):
  fresh = str(tmp_path / "fresh")
  shutil.copytree(workdir, fresh)
  args = ["--num_samples=32", "--batch_size=16", "--steps=1,2", "--ref=data:test"]
  stopped = run_cli("cm_jax.evaluate", f"--workdir={workdir}", *args, "--stop_after_batches=1",
                    check=False)
  assert stopped.returncode == 3, stopped.stderr[-2000:]
  assert [n for n in os.listdir(os.path.join(workdir, "eval")) if n.startswith("partial_")]
  resumed = run_cli("cm_jax.evaluate", f"--workdir={workdir}", *args)
  assert "resuming at sample 16 of 32" in resumed.stdout
  assert "| checkpoint | samples | 1 step FID (IS) | 2 steps FID (IS) |" in resumed.stdout
  run_cli("cm_jax.evaluate", f"--workdir={fresh}", *args)
  got, want = _rows(workdir), _rows(fresh)
  assert [r["nfe"] for r in got] == [1, 2] and all(r["num_samples"] == 32 for r in got)
  assert all(r["features"] == "digits" and r["checkpoint_step"] == 0 for r in got)
  for g, w in zip(got, want):
    assert g["fid"] == pytest.approx(w["fid"], rel=1e-9)
    assert g["is_mean"] == pytest.approx(w["is_mean"], rel=1e-9)
  assert not [n for n in os.listdir(os.path.join(workdir, "eval")) if n.startswith("partial_")]


def test_search_ts_writes_the_level_that_sample_uses(workdir, tmp_path):
  wd = str(tmp_path / "search")
  shutil.copytree(workdir, wd)
  out = run_cli("cm_jax.evaluate", f"--workdir={wd}", "--search_ts", "--search_grid=6",
                "--num_samples=16", "--batch_size=16", "--ref=data:test")
  evaluated = out.stdout.count("Search: ts=0,")
  with open(os.path.join(wd, "eval", "two_step_sigma.json")) as f:
    found = json.load(f)
  assert found["ts"][0] == 0 and found["ts"][2] == 5 and 1 <= found["ts"][1] <= 4
  assert len(found["searched"]) == evaluated and evaluated in (3, 4)  # each index once
  assert found["fid"] == min(found["searched"].values())
  out = run_cli("cm_jax.sample", f"--workdir={wd}", "--steps=2", "--num_samples=4",
                f"--out={tmp_path / 's2.npz'}")
  assert f"{found['sigma']}" in out.stdout.replace("np.float64(", "")


def test_bad_inputs_are_clear_errors(workdir, tmp_path):
  out = run_cli("cm_jax.evaluate", f"--workdir={workdir}", "--checkpoints=999", check=False)
  assert out.returncode == 2 and "No checkpoint for step(s) [999]" in out.stderr
  assert "available: [0]" in out.stderr
  # (Bad sample files, reference statistics and missing weights: tests/test_fid.py, in-process.)
