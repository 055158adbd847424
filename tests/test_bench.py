"""The benchmark CLI on a smoke config: it runs, prints its table and writes sane JSON."""
import json
import math

import pytest

from tests.cli_runner import run_cli

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

KEYS = ("params", "compile_s", "step_s", "img_per_s_per_device", "flops_per_step", "peak_flops",
        "peak_fraction", "peak_memory_bytes", "sample_img_per_s")


def test_bench_cli_writes_sane_json(tmp_path):
  path = tmp_path / "bench.json"
  out = run_cli("cm_jax.bench", "--config=configs/digits.py:method=ct,runlocal",
                "--config.model.channels=8", "--config.train.grad_accum=2", "--batch_size=4",
                "--steps=2",
                "--sample_repeats=1", "--matmul_size=256", f"--json={path}", timeout=300)
  assert "peak fraction" in out.stdout and "(4 per device, 2 micro-batches)" in out.stdout
  r = json.loads(path.read_text())
  for key in KEYS:
    assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
  assert r["batch_size"] == 4 and r["grad_accum"] == 2 and r["platform"] == "cpu"
  assert r["peak_memory_source"].startswith("compiled.memory_analysis")
  assert abs(r["img_per_s_per_device"] - 4 / r["step_s"]) < 1e-6 * r["img_per_s_per_device"]
  assert math.isclose(r["peak_fraction"], r["flops_per_step"] / r["step_s"] / r["peak_flops"])
  assert r["flops_per_step"] > 1e6   # XLA counted the network's convolutions
  # the CPU program (conv rewrites) runs at least the network's own FLOPs; the lax-conv
  # program's memory is analysed too
  assert r["flops_per_step_executed"] >= r["flops_per_step"]
  assert r["memory_analysis_plain_convs"]["total_bytes"] > 0


def test_bench_cli_bad_input_is_a_clear_error():
  out = run_cli("cm_jax.bench", "--config=configs/digits.py:method=ct,runlocal", "--steps=-1",
                check=False, timeout=120)
  assert out.returncode == 2 and "--steps" in out.stderr
