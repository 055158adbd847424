"""Runs the real CLIs (`python -m cm_jax.train` / `cm_jax.sample`) in subprocesses, and reads
back the state a run left in its workdir."""
import os
import subprocess
import sys

from cm_jax import checkpoint
from cm_jax.train.experiment import Experiment
from tests import REPO_ROOT, subprocess_env


def run_cli(module: str, *args: str, devices: int = 1, timeout: int = 600, check: bool = True
            ) -> subprocess.CompletedProcess:
  out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                       env=subprocess_env(devices=devices), capture_output=True, text=True,
                       timeout=timeout)
  if check and out.returncode != 0:
    raise AssertionError(f"{module} {' '.join(args)} exited {out.returncode}:\n"
                         f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
  return out


def train(workdir, config="configs/digits.py:method=ict,runlocal", *overrides, **kw):
  return run_cli("cm_jax.train", f"--config={config}", f"--workdir={workdir}", *overrides, **kw)


def sample(workdir, *args, **kw):
  return run_cli("cm_jax.sample", f"--workdir={workdir}", *args, **kw)


def restore(workdir):
  """(TrainState, meta) of the latest checkpoint in `workdir`, restored with its own config."""
  exp = Experiment.from_config(checkpoint.load_config(str(workdir)))
  ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
  state, meta = ckpt.restore(exp.abstract_state())
  ckpt.close()
  return state, meta


def snapshot(path) -> dict:
  """Every file under `path` (relative name -> bytes): what "nothing was written" compares."""
  out = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out
