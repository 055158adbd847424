"""launch/bench_gpu.sh rehearsed on the CPU (BENCH_GPU_DRY_RUN=1: every part, tiny configs, no
backend check), with its offline wheel install, and the JSON its `python -m cm_jax.bench` runs
write; and its error for a Python without the dependencies."""
import json
import math
import os
import stat
import subprocess
import sys
import zipfile

import pytest

from tests import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.slow
SCRIPT = os.path.join(REPO_ROOT, "launch", "bench_gpu.sh")
BENCH_KEYS = ("params", "compile_s", "step_s", "img_per_s_per_device", "flops_per_step",
              "peak_flops", "peak_fraction", "peak_memory_bytes", "sample_img_per_s")


def _probe_wheel(folder) -> None:
  """A minimal pure-Python wheel: what the script installs must land on its PYTHONPATH."""
  os.makedirs(folder)
  info = "cm_jax_probe-0.1.dist-info"
  files = {"cm_jax_probe.py": "VALUE = 7\n",
           f"{info}/METADATA": "Metadata-Version: 2.1\nName: cm_jax_probe\nVersion: 0.1\n",
           f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n"}
  files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
  with zipfile.ZipFile(os.path.join(folder, "cm_jax_probe-0.1-py3-none-any.whl"), "w") as z:
    for name, text in files.items():
      z.writestr(name, text)


def assert_sane_bench_json(r: dict) -> None:
  for key in BENCH_KEYS:
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


def test_dry_run_runs_every_part_summarises_and_writes_sane_bench_json(tmp_path):
  _probe_wheel(tmp_path / "wheels")
  out = tmp_path / "out"
  env = subprocess_env(OUT=str(out), BENCH_GPU_DRY_RUN="1", CM_JAX_PYTHON=sys.executable,
                       CM_JAX_WHEELS=str(tmp_path / "wheels"))
  # Extra flags reach both bench runs: 2 micro-batches, so the JSON shows grad_accum's fields.
  r = subprocess.run(["bash", SCRIPT, "--config.train.grad_accum=2"], env=env,
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "peak fraction" in r.stdout and "(4 per device, 2 micro-batches)" in r.stdout
  assert "wheels: 1 from" in r.stdout and "dry run on the CPU" in r.stdout
  site = r.stdout.split("installed into ")[1].split()[0]
  assert os.path.isfile(os.path.join(site, "cm_jax_probe.py"))
  summary = (out / "summary.txt").read_text().splitlines()
  assert [line.split(":")[0] for line in summary] == [
      "cifar10_ct_ncsnpp", "imagenet64_ct_adm_bf16", "inception features", "digits default"]
  assert "MFU" in summary[0] and "peak memory" in summary[1]
  assert float(summary[2].split()[2]) > 0, summary[2]
  assert "1-step Frechet" in summary[3] and "2-step Frechet" in summary[3]
  for name in ("cifar10_ct_ncsnpp", "imagenet64_ct_adm_bf16"):
    assert_sane_bench_json(json.loads((out / f"{name}.json").read_text()))
  assert (out / "digits_samples.png").stat().st_size > 0


def test_a_python_without_the_dependencies_is_told_what_to_do(tmp_path):
  fake = tmp_path / "python"   # the interpreter with no site-packages: no jax, no absl
  fake.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  env = subprocess_env(OUT=str(tmp_path / "out"), CM_JAX_PYTHON=str(fake),
                       CM_JAX_WHEELS=str(tmp_path / "none"))
  r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stderr
  assert "launch/gpu_wheels.sh" in r.stderr and "Traceback" not in r.stderr
