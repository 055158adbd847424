"""Multi-host code on one machine: `launch/train.sh --num_processes=2` (2 forced CPU devices each,
jax.distributed over localhost, gloo collectives) against one process on one device.

- each process reads its own rows of every global batch (disjoint, together the whole batch);
- SIGTERM to the launcher mid-training, on a gs:// workdir and data_dir (GCS emulator): every
  process stops at the same step and saves it, and the next launch resumes to the parameters of
  one uninterrupted single-device process on the same global batch (to tolerance), with its
  sample grid;
- `--dry_run` prints the TPU and SLURM commands; bad launcher input is a clear error.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from PIL import Image

from cm_jax import checkpoint, data, images
from cm_jax.data import pipeline
from cm_jax.train.experiment import Experiment
from configs import digits
from tests import REPO_ROOT, subprocess_env
from tests.cli_runner import restore, run_cli, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

CONFIG = "configs/digits.py:method=ict,runlocal"
STEPS = 30  # long enough that a SIGTERM after step 1-3 lands mid-run
OVERRIDES = (f"--config.train.num_steps={STEPS}", "--config.train.log_every=1",
             "--config.train.save_every=1000", "--config.train.sample_every=1000",
             "--config.train.num_grid_samples=0", "--config.eval.report_at_end=False")
LAUNCH = os.path.join(REPO_ROOT, "launch", "train.sh")


@pytest.fixture(scope="module")
def cache_env():
  """The test's interpreter, as it is (no .venv install step in the launcher); the 2-process runs
  go without the compilation cache (launch below)."""
  return {"CM_JAX_PYTHON": sys.executable}


def launch(workdir, cache_env, *extra, **popen):
  """launch/train.sh --num_processes=2 --cpu_devices=2 (a Popen; the caller waits)."""
  env = subprocess_env(devices=1, compilation_cache=False, **cache_env)
  return subprocess.Popen(
      ["bash", LAUNCH, "--num_processes=2", "--cpu_devices=2", f"--config={CONFIG}",
       f"--workdir={workdir}", *OVERRIDES, *extra],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      **popen)


def finish(proc, timeout=600, status=0) -> str:
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == status, out[-4000:]
  return out


def assert_same_state(a, b, atol):
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  print(f"max |difference| over the state: {diff:.3g}")
  assert diff <= atol, diff


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """The reference: one process on one device, the same global batch (in this process: its
  program is the one other tests' runs of this config compiled)."""
  workdir = tmp_path_factory.mktemp("mp") / "single"
  train(workdir, CONFIG, *OVERRIDES)
  return workdir


def test_processes_read_disjoint_rows_that_make_the_global_batch():
  """What each process of a 2-process run reads: disjoint records, together the 1-process batch."""
  config = digits.get_config("method=ict,runlocal").data
  whole = next(data.train_batches(config, global_batch_size=16, seed=0, start_step=5,
                                  process_index=0, process_count=1))
  parts = [next(data.train_batches(config, global_batch_size=16, seed=0, start_step=5,
                                   process_index=p, process_count=2)) for p in range(2)]
  n = data.dataset_size(config, "train")
  idx = [pipeline.batch_indices(n, 16, 0, 5, np.arange(p * 8, (p + 1) * 8))
         for p in range(2)]
  assert not set(idx[0]) & set(idx[1])
  for k in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_sigterm_stops_every_process_at_one_step_and_resumes(single, tmp_path, cache_env, gcs):
  """On object storage, as on a TPU pod: the workdir and the dataset in the (emulated) bucket,
  the logs copied there; the resumed run ends where the local one-process run ended."""
  from cm_jax import storage
  from tests.helpers.gcs_emulator import upload_tree
  data.prepare_digits(str(tmp_path / "tfds"))
  upload_tree(str(tmp_path / "tfds"), f"{gcs}/tfds")
  workdir = f"{gcs}/interrupted"
  # With the end-of-run sample grid: sampling runs on both processes, process 0 writes it.
  extra = (f"--config.data.data_dir={gcs}/tfds", "--config.train.num_grid_samples=4")
  proc = launch(workdir, cache_env, *extra)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if re.search(r"step [1-3]/%d " % STEPS, line):
      proc.send_signal(signal.SIGTERM)  # the launcher forwards it to both processes
      break
  out = "".join(lines) + finish(proc, status=75)  # stopped to be resumed (cli.EXIT_PREEMPTED)
  assert "Stopped by SIGTERM" in out and "stopping the others" not in out, out[-4000:]
  logs = [storage.read_text(f"{workdir}/logs/process_{i}.log") for i in range(2)]
  stops = [re.findall(r"Stopped by SIGTERM at step (\d+)", log) for log in logs]
  assert stops[0] and stops[0] == stops[1], stops  # both processes saved the same step
  stopped_at = int(stops[0][0])
  assert stopped_at < STEPS, out[-3000:]
  assert restore(workdir)[1]["step"] == stopped_at

  out = finish(launch(workdir, cache_env, *extra))  # the same command resumes
  assert f"Resumed from step {stopped_at}" in out, out[-3000:]
  logs = [storage.read_text(f"{workdir}/logs/process_{i}.log") for i in range(2)]
  assert "process 1 of 2, 2 local / 4 global devices" in logs[1], logs[1][-3000:]
  # Each process read its own half of every global batch of 16.
  assert "Process 0 of 2: rows [0, 8) of every global batch of 16" in logs[0], logs[0][-3000:]
  assert "Process 1 of 2: rows [8, 16) of every global batch of 16" in logs[1], logs[1][-3000:]
  # Only process 0 writes TensorBoard events: one file for each of the two launches.
  events = [n for n in storage.listdir(f"{workdir}/tensorboard") if n.startswith("events")]
  assert len(events) == 2, events
  a, _ = restore(single)
  b, meta = restore(workdir)
  assert meta["step"] == STEPS
  assert_same_state(a, b, atol=2e-5)
  # The grid the two processes sampled = the same seeds sampled here, on one device.
  exp = Experiment.from_config(checkpoint.load_config(str(single)))
  expected = images.make_grid(exp.generate(a.ema_params, [80.0], 4, seed=0))
  with storage.open_read(f"{workdir}/samples/grid_step{STEPS:07d}.png") as f:
    grid = np.asarray(Image.open(f))[::4, ::4]
  assert grid.shape == expected.shape[:2], (grid.shape, expected.shape)
  assert np.abs(grid.astype(int) - expected[..., 0].astype(int)).max() <= 1
  assert not os.path.exists(os.path.join(REPO_ROOT, "gs:"))


def run_launcher(*args, env_extra=None, path=None):
  env = dict(os.environ)
  env.pop("SLURM_JOB_ID", None)
  env.update(env_extra or {})
  if path is not None:
    env["PATH"] = path
  return subprocess.run(["bash", LAUNCH, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                        text=True, timeout=60)


def launch_cli(cli, workdir, cache_env, *args) -> str:
  """launch/train.sh --num_processes=2 --cpu_devices=2 --cli=CLI; its output."""
  env = subprocess_env(devices=1, compilation_cache=False, **cache_env)
  where = [f"--workdir={workdir}"] if workdir else []
  return finish(subprocess.Popen(
      ["bash", LAUNCH, "--num_processes=2", "--cpu_devices=2", f"--cli={cli}", *where, *args],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))


def test_sample_evaluate_and_edit_on_two_processes_equal_one(single, tmp_path, cache_env):
  """2 processes x 2 devices against one process on one device (in this process): the same
  samples, the same digit-feature FID of a workdir (reference statistics from the test split),
  the same Inception FID of a sample file and the same edit; only process 0 writes."""
  from tests.test_evaluate_cli import random_inception, smooth_uint8
  one, two = tmp_path / "one", tmp_path / "two"
  shutil.copytree(single, one)
  shutil.copytree(single, two)
  # Sampling: bit-identical samples (sample i depends on the seed and i alone).
  args = ["--num_samples=12", "--batch_size=8", "--steps=2"]
  run_cli("cm_jax.sample", f"--workdir={one}", *args, f"--out={one}/s.npz")
  out = launch_cli("sample", two, cache_env, *args, f"--out={two}/s.npz")
  assert "Wrote 12 samples" in out, out[-3000:]
  assert "Wrote 12 samples" not in (two / "logs" / "process_1.log").read_text()
  s1, s2 = np.load(one / "s.npz")["arr_0"], np.load(two / "s.npz")["arr_0"]
  np.testing.assert_array_equal(s1, s2)
  # A workdir's FID on the digit features: every process generates and scores its devices'
  # share; one results row, written by process 0.
  args = ["--num_samples=24", "--batch_size=8", "--steps=1", "--ref=data:test", "--features=digits"]
  run_cli("cm_jax.evaluate", f"--workdir={one}", *args, f"--json={one}/e.json")
  launch_cli("evaluate", two, cache_env, *args, f"--json={two}/e.json")
  e1, e2 = (json.loads((w / "e.json").read_text())[0] for w in (one, two))
  assert (e1["devices"], e2["devices"]) == (1, 4)
  assert e2["fid"] == pytest.approx(e1["fid"], rel=1e-6)
  assert len((two / "eval" / "results.jsonl").read_text().splitlines()) == 1
  # A sample file on a (random, converted) Inception.
  weights = random_inception(str(tmp_path / "inception"))
  np.savez(tmp_path / "rgb.npz", arr_0=smooth_uint8(10, 32, 0))
  np.savez(tmp_path / "ref.npz", arr_0=smooth_uint8(12, 32, 1))
  args = [f"--samples={tmp_path}/rgb.npz", f"--ref={tmp_path}/ref.npz",
          f"--inception_weights={weights}", "--batch_size=4"]
  run_cli("cm_jax.evaluate", *args, f"--json={one}/i.json")
  launch_cli("evaluate", None, cache_env, *args, f"--json={two}/i.json")
  i1, i2 = (json.loads((w / "i.json").read_text()) for w in (one, two))
  assert (i1["devices"], i2["devices"]) == (1, 4) and np.isfinite(i1["fid"])
  assert i2["fid"] == pytest.approx(i1["fid"], rel=1e-6)
  # Editing: inpainting the samples gives the same images.
  args = ["--task=inpaint", f"--images={one}/s.npz", "--batch_size=8"]
  run_cli("cm_jax.edit", f"--workdir={one}", *args, f"--out={one}/x.npz")
  launch_cli("edit", two, cache_env, *args, f"--out={two}/x.npz")
  x1, x2 = np.load(one / "x.npz")["arr_0"], np.load(two / "x.npz")["arr_0"]
  np.testing.assert_allclose(x1.astype(np.float32), x2.astype(np.float32), atol=1e-5)


def test_dry_run_prints_tpu_and_slurm_commands():
  out = run_launcher("--dry_run", "--tpu=pod", "--zone=us-central2-b", "--project=p1",
                     "--workdir=/mnt/shared/run", "--config.train.num_steps=10",
                     env_extra={"TFDS_DATA_DIR": "/mnt/data"})
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  where = "--worker=all --zone=us-central2-b --project=p1"
  assert any(l.startswith("gcloud compute tpus tpu-vm scp ") and "pod:cm_jax_code.tgz" in l
             and where in l for l in lines), out.stdout
  # Each worker: a Python 3.11 environment made by uv, cm_jax[tpu] installed into it.
  setup = [l for l in lines if l.startswith(f"gcloud compute tpus tpu-vm ssh pod {where}")
           and "uv venv" in l]
  assert len(setup) == 1 and "--python 3.11 .venv" in setup[0], out.stdout
  assert "uv pip install --quiet --python .venv/bin/python -e '\\''.[tpu]" in setup[0], setup
  run = [l for l in lines if "CM_JAX_DISTRIBUTED=1 TFDS_DATA_DIR=/mnt/data .venv/bin/python -m "
         "cm_jax.train" in l]
  assert len(run) == 1 and run[0].startswith(f"gcloud compute tpus tpu-vm ssh pod {where}")
  assert "--workdir=/mnt/shared/run --config.train.num_steps=10" in run[0]
  # Logs in the shared workdir, one per worker; worker 0's also on the caller's terminal, and
  # the run's exit status (75 = preempted, resume) survives the tee.
  assert "set -o pipefail;" in run[0] and "agent-worker-number" in run[0]
  assert "| tee /mnt/shared/run/logs/worker-$w.log; else" in run[0]
  assert "> /mnt/shared/run/logs/worker-$w.log 2>&1; fi" in run[0]
  # A workdir the workers do not share is refused before anything runs.
  out = run_launcher("--dry_run", "--tpu=pod", "--zone=z", "--workdir=runs/x")
  assert out.returncode == 2 and "would resolve on each worker's own disk" in out.stderr, out
  assert not out.stdout.strip(), out
  # A gs:// workdir: each worker logs on its own disk and copies the log into the bucket at the
  # end, keeping the run's exit status.
  out = run_launcher("--dry_run", "--tpu=pod", "--zone=z", "--workdir=gs://b/run")
  assert out.returncode == 0, out.stderr
  run = [l for l in out.stdout.splitlines() if "cm_jax.train" in l]
  assert "--workdir=gs://b/run" in run[0] and "| tee logs/worker-$w.log; else" in run[0], run
  assert ("; rc=$?; .venv/bin/python -m cm_jax.storage put logs/worker-$w.log "
          "gs://b/run/logs/worker-$w.log; exit $rc") in run[0], run

  out = run_launcher("--dry_run", "--slurm", "--gpus_per_node=8", "--nodes=2",
                     "--workdir=/shared/r", "--", "--config.train.batch_size=256",
                     env_extra={"CM_JAX_PYTHON": "python3"})
  assert out.returncode == 0, out.stderr
  srun = [l for l in out.stdout.splitlines() if l.startswith("srun ")]
  assert srun == ["srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --kill-on-bad-exit=1 "
                  "--output=/shared/r/logs/slurm-%j-%t.log env CM_JAX_DISTRIBUTED=1 python3 -m "
                  "cm_jax.train --config=configs/digits.py:method=ict --workdir=/shared/r "
                  "--config.train.batch_size=256"], out.stdout
  # Inside an allocation, no flag: srun with the allocation's nodes and GPUs.
  out = run_launcher("--dry_run", env_extra={"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3",
                                             "SLURM_GPUS_ON_NODE": "4", "CM_JAX_PYTHON": "py"})
  assert "srun --nodes=3 --ntasks-per-node=4 --gpus-per-node=4" in out.stdout, out

  out = run_launcher("--dry_run", "--num_processes=2", "--cpu_devices=2", "--workdir=/tmp/x",
                     env_extra={"CM_JAX_PYTHON": "py"})
  procs = [l for l in out.stdout.splitlines() if l.startswith("env CM_JAX_DISTRIBUTED=1")]
  assert len(procs) == 2 and all("CM_JAX_NUM_PROCESSES=2" in l for l in procs), out.stdout
  assert "CM_JAX_PROCESS_ID=1" in procs[1] and "process_1.log" in procs[1]
  # A gs:// workdir: the processes log to ./logs, copied into the bucket when they end.
  out = run_launcher("--dry_run", "--num_processes=2", "--workdir=gs://b/run",
                     env_extra={"CM_JAX_PYTHON": "py"})
  lines = out.stdout.splitlines()
  assert "mkdir -p logs" in lines and "> logs/process_1.log 2>&1 &" in out.stdout, out.stdout
  assert lines[-1] == "py -m cm_jax.storage put logs/process_1.log gs://b/run/logs/process_1.log"
  out = run_launcher("--dry_run", "--slurm", "--gpus_per_node=2", "--workdir=gs://b/run",
                     env_extra={"CM_JAX_PYTHON": "py"})
  assert "--output=logs/slurm-%j-%t.log" in out.stdout, out.stdout


def test_bad_launcher_input_is_a_clear_error(tmp_path):
  cases = [
      (("--tpu=pod",), "needs --zone=ZONE"),
      (("--slurm", "--dry_run"), "pass --gpus_per_node=G"),
      (("--num_processes=0",), "--num_processes must be a positive integer"),
      (("--num_processes=two",), "--num_processes must be a positive integer"),
      (("--tpu=a", "--zone=b", "--num_processes=2"), "choose one target"),
      (("--zone=b",), "--zone and --project are for --tpu"),
      (("--cpu_devices=2",), "are for --num_processes"),
      (("--num_processes",), "needs a value"),
  ]
  for args, message in cases:
    out = run_launcher(*args)
    assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
  # No gcloud on PATH: say what to install (only the tools the script needs are linked).
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("bash", "dirname", "sed", "tar", "mkdir", "rm", "tee"):
    found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True)
    if found.stdout.strip():
      os.symlink(found.stdout.strip(), bin_dir / tool)
  out = run_launcher("--tpu=pod", "--zone=z", "--workdir=/mnt/x", path=str(bin_dir))
  assert out.returncode == 2 and "needs the gcloud CLI" in out.stderr, out.stderr
  out = run_launcher("--slurm", "--gpus_per_node=2", path=str(bin_dir))
  assert out.returncode == 2 and "needs srun on PATH" in out.stderr, out.stderr
