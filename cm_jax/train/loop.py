"""The training loop: the stateful edge around the pure, jitted train step."""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Optional

import jax
import ml_collections
import numpy as np

from cm_jax import checkpoint, data, images, parallel
from cm_jax.train import metrics as metrics_lib
from cm_jax.train import teacher as teacher_lib
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step

log = logging.getLogger("cm_jax")


class _StopRequest:
  """Turns SIGTERM (preemption) and a first Ctrl-C into 'save and stop after this step'."""

  def __init__(self):
    self.requested: Optional[str] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def check_finite(metrics: dict, step: int, ckpt: checkpoint.Checkpointer) -> None:
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
  if bad:
    raise FloatingPointError(
        f"Non-finite {', '.join(bad)} at step {step}; nothing from this step was saved. Last good "
        f"checkpoint: step {ckpt.latest_step()} in {ckpt.directory}. Lower optim.learning_rate or "
        "set optim.grad_clip, then resume.")


def save_grid(exp: Experiment, params, workdir: str, step: int, writer) -> str:
  """1-step samples from sigma_max, or the ODE solver's for EDM (fixed seed, so grids compare
  across steps)."""
  n = int(exp.config.train.num_grid_samples)
  samples = exp.generate(params, exp.default_plan(), n, seed=0)
  grid = images.make_grid(samples)
  path = os.path.join(workdir, "samples", f"grid_step{step:07d}.png")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    images.save_png(path, grid, scale=4)
    writer.write_images(step, {"samples/" + ("ode" if exp.is_denoiser else "1step"): grid})
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint) and returns a summary dict."""
  exp = Experiment.from_config(config)
  tc = config.train
  global_batch = int(tc.batch_size)
  parallel.check_batch_size(global_batch, exp.mesh)
  data.check_config(config.data)
  # CD: a missing or mismatched teacher is an error before this workdir is touched.
  teacher_config = teacher_lib.check(config) if exp.method.uses_teacher else None
  if teacher_config is None and config.get("teacher"):
    raise ValueError(f"--config.teacher is for distillation (method=cd); method={config.method} "
                     "does not use a teacher.")
  if jax.process_index() == 0:
    checkpoint.check_or_write_config(workdir, config)

  ckpt = checkpoint.Checkpointer(workdir, keep=int(tc.keep_checkpoints))
  teacher = None
  if ckpt.latest_step() is not None:
    state, meta = ckpt.restore(exp.abstract_state())
    if teacher_config is not None:
      teacher = teacher_lib.load(config, teacher_config, exp.mesh, recorded=meta.get("teacher"))
    log.info("Resumed from step %d in %s", meta["step"], ckpt.directory)
  elif teacher_config is not None:
    teacher = teacher_lib.load(config, teacher_config, exp.mesh)
    state = teacher_lib.init_student(exp, int(config.seed), teacher)
  else:
    state = exp.init_state(int(config.seed))
  frozen = None if teacher is None else teacher.ema_params  # never donated, never saved
  start = int(jax.device_get(state.step))
  num_steps = int(tc.num_steps)
  writer = metrics_lib.MetricWriter(os.path.join(workdir, "tensorboard"))
  if start == 0:
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    writer.write_hparams({**checkpoint.flat_config(config),
                          "num_params": n_params})
    log.info("Training %s on %s: %d parameters, %d devices, global batch %d, %d steps.",
             config.method, config.data.name, n_params, exp.mesh.devices.size, global_batch,
             num_steps)

  batches = data.train_batches(config.data, global_batch_size=global_batch,
                               seed=int(config.seed), start_step=start)
  train_step = make_train_step(exp.method, exp.tx, float(config.ema_rate), exp.mesh)
  meta = lambda s: {"step": s, "data_position": s, "method": config.method,
                    **({} if teacher is None else {"teacher": teacher.meta})}
  summary = {"workdir": workdir, "start_step": start, "preempted": None}

  t_last, step_last = time.perf_counter(), start
  with _StopRequest() as stop:
    step = start
    while step < num_steps:
      batch = parallel.global_batch(next(batches), exp.mesh)
      state, metrics = train_step(state, batch, frozen)
      step += 1
      if step % int(tc.log_every) == 0 or step == num_steps or stop.requested:
        host = jax.device_get(metrics)
        check_finite(host, step, ckpt)
        now = time.perf_counter()
        rate = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        scalars = {k: float(np.mean(v)) for k, v in host.items()}
        scalars.update(exp.method.schedule(step - 1))
        scalars.update({"steps_per_s": rate, "img_per_s": rate * global_batch})
        writer.write_scalars(step, scalars)
        eta = (num_steps - step) / max(rate, 1e-9)
        log.info("step %d/%d  %.2f steps/s  %.0f img/s  ETA %s", step, num_steps, rate,
                 rate * global_batch, time.strftime("%H:%M:%S", time.gmtime(eta)))
      if step % int(tc.save_every) == 0 and step != num_steps:
        check_finite(jax.device_get(metrics), step, ckpt)
        ckpt.save(state, meta(step))
      if step % int(tc.sample_every) == 0 and step != num_steps:
        save_grid(exp, state.ema_params, workdir, step, writer)
      if stop.requested:
        summary["preempted"] = stop.requested
        break

  if step > start:
    check_finite(jax.device_get(metrics), step, ckpt)
  ckpt.save(state, meta(step))
  ckpt.close()
  if summary["preempted"]:
    log.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same command to resume.",
                summary["preempted"], step, ckpt.directory)
  else:
    summary["grid"] = save_grid(exp, state.ema_params, workdir, step, writer)
  writer.flush()
  writer.close()
  summary.update(step=step, checkpoint_dir=ckpt.directory, state=state, experiment=exp)
  return summary
