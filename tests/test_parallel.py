"""The sharded train step gives the same result on 8 devices as on 1 (same global batch)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import subprocess_env

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

METHODS = ("ct", "ict", "cd")


@pytest.fixture(scope="module")
def compared() -> dict:
  """Every method's 1-vs-8-device comparison, from one subprocess (one start, one import)."""
  out = subprocess.run([sys.executable, "-m", "tests.helpers.multidevice_step", *METHODS],
                       env=subprocess_env(devices=8), capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return {row["method"]: row for row in rows}


@pytest.mark.parametrize("method", METHODS)
def test_train_step_8_devices_matches_1(compared, method):
  r = compared[method]
  np.testing.assert_allclose(r["loss_8"], r["loss_1"], rtol=1e-5)
  # Three steps of RAdam: float32 reduction order differs between 1 and 8 devices only.
  assert r["max_param_diff"] < 1e-5, r
  assert r["max_ema_diff"] < 1e-5, r
  if method == "ict":  # 2 micro-batches over the 8 devices, against the unsplit step
    assert r["max_grad_accum_diff"] < 1e-5, r
