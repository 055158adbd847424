"""parallel.fsdp=K: parameters, optimizer state and EMA split over an fsdp mesh axis give the
data-parallel step's result (8 forced CPU devices, in a subprocess)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cm_jax import parallel
from tests import REPO_ROOT, subprocess_env

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


def test_fsdp_step_matches_data_parallel():
  out = subprocess.run([sys.executable, "-m", "tests.helpers.fsdp_step"], cwd=REPO_ROOT,
                       env=subprocess_env(devices=8), capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(r["loss_fsdp"], r["loss_dp"], rtol=1e-5)
  assert r["max_state_diff"] < 1e-5, r
  # Most leaves (all the big ones) are split: each device holds about a quarter of the weights.
  assert r["split_leaves"] >= r["leaves"] // 2 and r["shard_fraction"] < 0.4, r
  assert r["opt_split"] > 0, r
  assert r["restored_diff"] == 0 and r["restored_replicated"], r
  assert r["max_sample_diff"] <= 1, r


def test_fsdp_spec_picks_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((3, 3, 16, 32), 4) == parallel.P(None, None, None, "fsdp")
  assert parallel.fsdp_spec((64, 32), 4) == parallel.P("fsdp")
  assert parallel.fsdp_spec((6, 10), 4) == parallel.P()     # nothing divisible: replicated
  assert parallel.fsdp_spec((), 4) == parallel.P()          # scalars (step, counts)
  assert parallel.fsdp_spec((64, 32), 1) == parallel.P()    # fsdp=1: pure data parallel


def test_bad_fsdp_size_is_a_clear_error():
  import jax
  with pytest.raises(ValueError, match="must be a positive divisor"):
    parallel.create_mesh(jax.devices(), fsdp=3 * jax.device_count() + 1)
