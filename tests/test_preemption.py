"""SIGTERM mid-training saves a checkpoint and exits; the resumed run ends bit-identical to an
uninterrupted one (params, EMA, optimizer state, step, RNG: the data position is the step)."""
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import REPO_ROOT, subprocess_env
from tests.cli_runner import restore, train

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

CONFIG = "configs/digits.py:method=ct,runlocal"
OVERRIDES = ("--config.train.num_steps=60", "--config.train.log_every=1",
             "--config.train.save_every=1000", "--config.train.sample_every=1000",
             "--config.eval.report_at_end=False")


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
  train(tmp_path / "straight", CONFIG, *OVERRIDES)

  proc = subprocess.Popen(
      [sys.executable, "-m", "cm_jax.train", f"--config={CONFIG}",
       f"--workdir={tmp_path / 'interrupted'}", *OVERRIDES],
      cwd=REPO_ROOT, env=subprocess_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE,
      text=True)
  log = []
  for line in proc.stderr:
    log.append(line)
    if "step 20/60" in line:
      proc.send_signal(signal.SIGTERM)
      break
  _, rest = proc.communicate(timeout=300)
  log.append(rest)
  text = "".join(log)
  assert proc.returncode == 75, text[-3000:]  # cli.EXIT_PREEMPTED: stopped, to be resumed
  assert "Stopped by SIGTERM" in text, text[-3000:]
  stopped_at = int(restore(tmp_path / "interrupted")[1]["step"])
  assert 20 <= stopped_at < 60

  train(tmp_path / "interrupted", CONFIG, *OVERRIDES)  # resumes
  a, meta_a = restore(tmp_path / "straight")
  b, meta_b = restore(tmp_path / "interrupted")
  assert meta_a["step"] == meta_b["step"] == 60
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # metrics.jsonl: every step once, the same losses as the uninterrupted run (rows the stopped
  # run logged past its checkpoint were dropped on resume and logged again).
  def losses(run):
    lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
    return [(row["step"], row["loss"]) for row in map(json.loads, lines)]
  assert losses("interrupted") == losses("straight")
  assert [s for s, _ in losses("straight")] == list(range(1, 61))
