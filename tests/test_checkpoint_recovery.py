"""Resume never trips on a bad checkpoint, and no checkpoint ever holds NaN.

- a half-written save (Orbax's `STEP.orbax-checkpoint-tmp-*`) is never chosen for resume;
- a finished checkpoint damaged by hand (a data file truncated, or deleted) is skipped with a
  warning, moved aside, and the run resumes from the one before and saves that step again;
- a non-finite loss stops the run naming the step and the last good checkpoint (nothing saved),
  or with train.skip_nonfinite=True the step is not applied, counted and logged.

In-process (one CPU device) through loop.train_and_evaluate, on the runlocal digits config.
"""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import checkpoint, parallel
from cm_jax.train import loop
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step
from configs import digits

# Trains or launches processes: the whole suite, not the fast tier (-m "not slow").
pytestmark = pytest.mark.slow


def small_config(**train):
  c = digits.get_config("method=ict,runlocal")
  c.train.update({**dict(num_steps=4, save_every=2, log_every=2, sample_every=1000,
                         num_grid_samples=0), **train})
  c.eval.report_at_end = False
  return c


def steps_on_disk(workdir):
  return sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def test_half_written_and_damaged_checkpoints_are_skipped(tmp_path, caplog):
  workdir = tmp_path / "run"
  loop.train_and_evaluate(small_config(), str(workdir))
  assert steps_on_disk(workdir) == ["2", "4"]
  # A save that never finished: Orbax's temporary directory for step 6.
  tmp = workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234567"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "junk").write_bytes(b"\0" * 10)
  # Damage step 4 by hand: truncate its largest data file.
  data_files = [os.path.join(d, f) for d, _, fs in os.walk(workdir / "checkpoints" / "4" / "state")
                for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)]
  largest = max(data_files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 3)

  caplog.set_level(logging.WARNING, logger="cm_jax")
  summary = loop.train_and_evaluate(small_config(), str(workdir))  # the same command again
  assert summary["start_step"] == 2 and summary["step"] == 4
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "Checkpoint step 4" in warnings and "does not restore" in warnings, warnings
  assert "Resumed from step 2 instead of the damaged step(s) 4" in warnings, warnings
  names = os.listdir(workdir / "checkpoints")
  assert any(n.startswith("corrupt-4-") for n in names), names
  assert tmp.name in names  # the half-written save is left alone, and was never a candidate
  assert steps_on_disk(workdir) == ["2", "4"]  # step 4 saved again, properly

  # Deleting a file of the newest checkpoint: the same fallback.
  os.remove(workdir / "checkpoints" / "4" / "state" / "manifest.ocdbt")
  caplog.clear()
  summary = loop.train_and_evaluate(small_config(), str(workdir))
  assert summary["start_step"] == 2, summary["start_step"]
  assert "damaged step(s) 4" in caplog.text
  assert len([n for n in os.listdir(workdir / "checkpoints") if n.startswith("corrupt-4-")]) == 2


def poison(monkeypatch, batches):
  """The loop's input with a NaN pixel in the given (0-based) global batches: step k+1 reads
  batch k."""
  from cm_jax import data
  real = data.train_batches

  def poisoned(*args, **kwargs):
    for k, batch in enumerate(real(*args, **kwargs), start=kwargs.get("start_step", 0)):
      if k in batches:
        batch = dict(batch, image=batch["image"].copy())
        batch["image"][0, 0, 0, 0] = np.nan
      yield batch

  monkeypatch.setattr(loop.data, "train_batches", poisoned)


def test_nonfinite_loss_stops_and_names_step_and_last_good_checkpoint(tmp_path, monkeypatch):
  poison(monkeypatch, {2})  # step 3
  workdir = tmp_path / "nan"
  with pytest.raises(FloatingPointError) as e:
    loop.train_and_evaluate(small_config(num_steps=6), str(workdir))
  message = str(e.value)
  assert "Non-finite loss or gradient at step 3" in message, message
  assert "Last good checkpoint: step 2" in message and "skip_nonfinite" in message
  assert steps_on_disk(workdir) == ["2"]  # nothing non-finite was saved


def test_skip_nonfinite_step_is_not_applied_and_counted():
  config = small_config()
  exp = Experiment.from_config(config)
  mesh = exp.mesh
  step = make_train_step(exp.method, exp.tx, float(config.ema_rate), mesh, skip_nonfinite=True,
                         state_sharding=exp.state_sharding())
  rng = np.random.default_rng(0)
  good = {"image": rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32),
          "label": rng.integers(0, 10, 16).astype(np.int32)}
  bad = dict(good, image=good["image"].copy())
  bad["image"][3, 4, 5, 0] = np.nan
  state = exp.init_state(0)
  state, m1 = step(state, parallel.global_batch(good, mesh), None)
  before = jax.tree.map(np.asarray, state)
  state, m2 = step(state, parallel.global_batch(bad, mesh), None)
  assert int(m1["nonfinite"]) == 0 and int(m2["nonfinite"]) == 1
  assert int(state.step) == 2  # the data position moves past the bad batch
  for name in ("params", "ema_params", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(before, name)), jax.tree.leaves(getattr(state, name))):
      np.testing.assert_array_equal(a, np.asarray(b))
  state, m3 = step(state, parallel.global_batch(good, mesh), None)
  assert int(m3["nonfinite"]) == 0 and bool(jnp.isfinite(m3["loss"]))
  assert any(not np.array_equal(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params)))


def test_skip_nonfinite_run_logs_the_count_and_saves_finite_state(tmp_path, caplog,
                                                                  monkeypatch):
  """Batches 2 and 4 of the run carry a NaN pixel: those steps are skipped and counted."""
  poison(monkeypatch, {1, 3})
  caplog.set_level(logging.INFO, logger="cm_jax")
  workdir = tmp_path / "skip"
  summary = loop.train_and_evaluate(small_config(skip_nonfinite=True), str(workdir))
  assert summary["step"] == 4
  assert "Skipped 2 step(s) with a non-finite loss or gradient" in caplog.text, caplog.text
  assert "skipped_steps=2" in caplog.text
  exp = Experiment.from_config(checkpoint.load_config(str(workdir)))
  ckpt = checkpoint.Checkpointer(str(workdir), async_save=False)
  state, meta = ckpt.restore(exp.abstract_state())
  ckpt.close()
  assert meta["skipped_steps"] == 2
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))
