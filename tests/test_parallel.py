"""The sharded train step gives the same result on 8 devices as on 1 (same global batch)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests import subprocess_env

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", ["ct", "ict", "cd"])
def test_train_step_8_devices_matches_1(method):
  env = subprocess_env(devices=8)
  out = subprocess.run([sys.executable, "-m", "tests.helpers.multidevice_step", method],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(r["loss_8"], r["loss_1"], rtol=1e-5)
  # Three steps of RAdam: float32 reduction order differs between 1 and 8 devices only.
  assert r["max_param_diff"] < 1e-5, r
  assert r["max_ema_diff"] < 1e-5, r
  if method == "ict":  # 2 micro-batches over the 8 devices, against the unsplit step
    assert r["max_grad_accum_diff"] < 1e-5, r
