"""The benchmark CLI's input check. Its table and JSON on a smoke config are checked where
launch/bench_gpu.sh's dry run writes them (test_bench_gpu_script.py)."""
import pytest

from tests.cli_runner import run_cli

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow

def test_bench_cli_bad_input_is_a_clear_error():
  out = run_cli("cm_jax.bench", "--config=configs/digits.py:method=ct,runlocal", "--train_steps=-1",
                check=False, timeout=120)
  assert out.returncode == 2 and "--train_steps" in out.stderr
