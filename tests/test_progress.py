"""Progress bars of the long loops, and the memory figure of the training status line."""
import types

import numpy as np

from cm_jax import parallel, progress
from cm_jax.train import loop


def _double(x):
  return x * 2


def test_a_loop_of_several_batches_shows_a_bar(capsys, monkeypatch):
  monkeypatch.delenv(progress.ENV, raising=False)
  out = parallel.map_in_batches(_double, [np.arange(10)], 4, progress="sampling")
  np.testing.assert_array_equal(out, np.arange(10) * 2)
  err = capsys.readouterr().err
  assert "sampling" in err and "10/10" in err, err


def test_one_batch_or_the_variable_off_shows_none(capsys, monkeypatch):
  parallel.map_in_batches(_double, [np.arange(4)], 4, progress="sampling")
  assert capsys.readouterr().err == ""
  monkeypatch.setenv(progress.ENV, "0")
  parallel.map_in_batches(_double, [np.arange(10)], 4, progress="sampling")
  assert capsys.readouterr().err == ""
  assert not progress.enabled()


def test_memory_in_the_status_line_on_accelerators_only(monkeypatch):
  assert loop._memory_in_use() == ""  # XLA:CPU
  stats = {"bytes_in_use": 3 * 2**30, "peak_bytes_in_use": 7 * 2**29}
  fake = types.SimpleNamespace(memory_stats=lambda: stats)
  monkeypatch.setattr(loop.jax, "local_devices", lambda: [fake])
  assert loop._memory_in_use() == "  memory 3.00 GiB (peak 3.50)"
