"""Runs the real CLIs (`python -m cm_jax.train` / `cm_jax.sample` ...), in this process when they
run on one device (tests/in_process_cli.py) and in subprocesses otherwise, and reads back the
state a run left in its workdir."""
import os
import subprocess
import sys

from cm_jax import checkpoint
from cm_jax.train.experiment import Experiment
from tests import REPO_ROOT, subprocess_env


# CM_JAX_TEST_CLI_SUBPROCESS=1 runs every command in a subprocess, as before the in-process runner.
IN_PROCESS = os.environ.get("CM_JAX_TEST_CLI_SUBPROCESS") != "1"


def run_cli(module: str, *args: str, devices: int = 1, timeout: int = 600, check: bool = True,
            subprocess_only: bool = False) -> subprocess.CompletedProcess:
  """`python -m module args...`: in this process on one device (unless subprocess_only), else a
  subprocess with `devices` CPU devices."""
  if devices == 1 and IN_PROCESS and not subprocess_only:
    from tests import in_process_cli
    out = in_process_cli.run(module, *args)
  else:
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                         env=subprocess_env(devices=devices), capture_output=True, text=True,
                         timeout=timeout)
  if check and out.returncode != 0:
    raise AssertionError(f"{module} {' '.join(args)} exited {out.returncode}:\n"
                         f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
  return out


def assert_user_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
  """A mistake in what was given: exit status 2, one `error:` naming each fragment, no
  traceback."""
  assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
  for fragment in fragments:
    assert fragment in out.stderr, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]


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
