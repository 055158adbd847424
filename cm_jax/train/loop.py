"""The training loop: the stateful edge around the pure, jitted train step."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cm_jax import (checkpoint, data, files, images, methods, parallel, storage,
                    workdir_lock)
from cm_jax.errors import Diverged, UserError
from cm_jax.train import metrics as metrics_lib
from cm_jax.train import teacher as teacher_lib
from cm_jax.train.experiment import Experiment
from cm_jax.train.state import TrainState
from cm_jax.train.step import make_finite_check, make_train_step

log = logging.getLogger("cm_jax")
METRICS_FILE = "metrics.jsonl"  # the logged scalars, one JSON row per logged step


class _StopRequest:
  """Turns SIGTERM (preemption) and a first Ctrl-C into 'save and stop after this step'.

  One process: Python handlers set a flag. Several processes: they must all stop after the same
  step, so SIGTERM is left to jax.distributed's preemption notifier (whose handler Python's would
  replace) and `poll` asks its sync point, which every process reaches at the same step; a first
  Ctrl-C is turned into a SIGTERM of this process, and so takes the same path.
  """

  def __init__(self):
    self.requested: Optional[str] = None
    self._previous = {}
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    self.requested = signal.Signals(signum).name
    if self._multiprocess:
      os.kill(os.getpid(), signal.SIGTERM)  # to the preemption notifier

  def poll(self, step: int) -> bool:
    """Whether to save and stop after `step` (call once per step, on every process)."""
    if self._multiprocess:
      if parallel.reached_preemption_sync_point(step):
        self.requested = self.requested or "SIGTERM"
        return True
      return False
    return self.requested is not None

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _NonFiniteGuard:
  """The run's one policy on non-finite values: what is checked, when, and what then happens.

  Every step adds its `nonfinite` flag (loss or gradient norm not finite) to a tally on the device,
  so no step waits for the host. The tally is read at log steps and before every save:
  - stop mode (the default): the first non-finite step raises Diverged naming it and the last good
    checkpoint, and so do non-finite logged metrics;
  - skip mode (train.skip_nonfinite): the train step did not apply such a step; it is counted,
    logged, and recorded as skipped_steps in the metrics and the checkpoint meta (the count goes
    on across resumes).
  Before a save the whole state is checked as well, in both modes: no checkpoint ever holds NaN.
  """

  def __init__(self, mesh, ckpt: checkpoint.Checkpointer, start: int, skip: bool,
               skipped_before: int):
    self.ckpt, self.start, self.skip, self.before = ckpt, start, skip, skipped_before
    self._zeros = jax.jit(lambda: (jnp.int32(0), jnp.int32(-1), jnp.int32(0)),
                          out_shardings=parallel.replicated(mesh))
    self._add = jax.jit(self._update, donate_argnums=0)
    self._state_is_finite = make_finite_check(mesh)
    self._tally = None
    self._reported = 0

  @staticmethod
  def _update(tally, bad):
    count, first, seen = tally
    seen = seen + 1
    first = jnp.where((first < 0) & (bad > 0), seen, first)
    return count + bad, first, seen

  def add(self, bad) -> None:
    """After every step: its metrics['nonfinite']."""
    self._tally = self._add(self._zeros() if self._tally is None else self._tally, bad)

  def at_log(self, step: int, host_metrics: dict) -> int:
    """At a log step: raises (stop mode) or returns the skipped steps so far (skip mode)."""
    skipped = self._skipped()
    if not self.skip:
      bad = [k for k, v in host_metrics.items() if not np.all(np.isfinite(v))]
      if bad:
        raise self._diverged(f"Non-finite {', '.join(bad)} at step {step}",
                             "Lower optim.learning_rate or set optim.grad_clip, then resume.")
    return skipped

  def before_save(self, step: int, state) -> int:
    """Before saving `state` at `step`: raises, or returns the skipped steps for the meta."""
    skipped = self._skipped()
    if not bool(jax.device_get(self._state_is_finite(state))):
      raise self._diverged(f"The train state holds non-finite values at step {step}")
    return skipped

  def _skipped(self) -> int:
    if self._tally is None:
      return self.before
    count, first, _ = (int(x) for x in jax.device_get(self._tally))
    if count and not self.skip:
      raise self._diverged(
          f"Non-finite loss or gradient at step {self.start + first}",
          "Lower optim.learning_rate or set optim.grad_clip and resume, or set "
          "--config.train.skip_nonfinite=True to skip such steps.")
    if count > self._reported:
      log.warning("Skipped %d step(s) with a non-finite loss or gradient so far (the first at step "
                  "%d); their updates were not applied.", count, self.start + first)
      self._reported = count
    return self.before + count

  def _diverged(self, what: str, advice: str = "") -> Diverged:
    self.ckpt.wait()  # an async save in flight counts once it is finished
    last = self.ckpt.latest_step()
    last = "none yet" if last is None else f"step {last}"
    return Diverged(f"{what}; nothing from it was saved. Last good checkpoint: {last} in "
                    f"{self.ckpt.directory}. {advice}".rstrip())


def _duration(seconds: float) -> str:
  days, rest = divmod(int(round(seconds)), 86400)
  clock = time.strftime("%H:%M:%S", time.gmtime(rest))
  return f"{days}d {clock}" if days else clock


class _Expectation:
  """Says early how long the run will take: times `window` steps after the first (compiled) one
  and logs the projected training time, so nobody waits blind for the first periodic log."""

  def __init__(self, start: int, num_steps: int, window: int = 20):
    self.start, self.num_steps, self.window = start, num_steps, window
    self._t0 = None

  def after(self, step: int, metrics) -> None:
    if self.num_steps - self.start <= 2 * self.window or step > self.start + self.window + 1:
      return
    if step == self.start + 1:
      jax.block_until_ready(metrics)
      self._t0 = time.perf_counter()
    elif step == self.start + self.window + 1:
      jax.block_until_ready(metrics)
      rate = self.window / max(time.perf_counter() - self._t0, 1e-9)
      log.info("Expected training time: %s for %d steps at %.2f steps/s (compilation done).",
               _duration((self.num_steps - step) / rate), self.num_steps - self.start, rate)


@dataclasses.dataclass(frozen=True)
class _Every:
  """A periodic action of the loop: run(step, state, metrics) every `period` steps. On the last
  step of a call (train.num_steps, or a stop request) only the `at_last` ones run: the loop then
  saves, and samples unless stopped, once after it ends."""
  period: int
  run: Callable[[int, TrainState, dict], None]
  at_last: bool = False

  def due(self, step: int, last: bool) -> bool:
    return self.at_last if last else step % self.period == 0


class _StatusLog:
  """The log-step action: the metrics through the non-finite guard, the scalars to the writer
  (with the steps skipped so far, in skip mode), and a status line with the rate and ETA."""

  def __init__(self, exp: Experiment, writer, guard: _NonFiniteGuard, start: int, num_steps: int,
               global_batch: int):
    self.exp, self.writer, self.guard = exp, writer, guard
    self.num_steps, self.global_batch = num_steps, global_batch
    self._t_last, self._step_last = time.perf_counter(), start

  def __call__(self, step: int, state: TrainState, metrics: dict) -> None:
    host = jax.device_get(metrics)
    del host["nonfinite"]
    skipped = self.guard.at_log(step, host)
    now = time.perf_counter()
    rate = (step - self._step_last) / max(now - self._t_last, 1e-9)
    self._t_last, self._step_last = now, step
    scalars = {k: float(np.mean(v)) for k, v in host.items()}
    if self.guard.skip:
      scalars["skipped_steps"] = skipped
    scalars.update(self.exp.method.schedule(step - 1))
    scalars.update({"steps_per_s": rate, "img_per_s": rate * self.global_batch})
    self.writer.write_scalars(step, scalars)
    eta = (self.num_steps - step) / max(rate, 1e-9)
    if jax.process_index() == 0:
      log.info("step %d/%d  %.2f steps/s  %.0f img/s  ETA %s%s", step, self.num_steps, rate,
               rate * self.global_batch, _duration(eta), _memory_in_use())


def save_grid(exp: Experiment, params, workdir: str, step: int, writer) -> str:
  """1-step samples from sigma_max, or the ODE solver's for EDM (fixed seed, so grids compare
  across steps)."""
  n = int(exp.config.train.num_grid_samples)
  if n <= 0:  # train.num_grid_samples=0: no grids
    return ""
  samples = exp.generate(params, exp.default_plan(), n, seed=0)
  grid = images.make_grid(samples)
  path = storage.join(workdir, "samples", f"grid_step{step:07d}.png")
  if jax.process_index() == 0:
    storage.makedirs(os.path.dirname(path))
    images.save_png(path, grid, scale=4)
    writer.write_images(step, {"samples/" + ("ode" if exp.is_denoiser else "1step"): grid})
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       finish: Optional[Callable[[dict], None]] = None) -> dict:
  """Trains (resuming from `workdir` when it holds a checkpoint) and returns a summary dict.

  finish(summary) runs once training reached train.num_steps in this call, still holding the
  workdir's lock (the final report writes there)."""
  exp = Experiment.from_config(config)
  tc = config.train
  global_batch = int(tc.batch_size)
  parallel.check_batch_size(global_batch, exp.mesh, int(tc.get("grad_accum", 1)))
  data.check_config(config.data)
  # CD, ECT, sCD (and CT when given one): a missing or mismatched teacher is an error before this
  # workdir is touched.
  teacher_use = methods.spec(config.method).teacher
  wants_teacher = teacher_use == "required" or (teacher_use == "optional" and config.get("teacher"))
  teacher_config = teacher_lib.check(config) if wants_teacher else None
  if teacher_config is None and config.get("teacher"):
    takers = [n for n, s in methods.SPECS.items() if s.teacher != "none"]
    raise UserError(f"--config.teacher is for method={' | '.join(takers)}; "
                    f"method={config.method} does not use a teacher.")
  files.check_output_dir(workdir, "--workdir")
  with _claim_workdir(workdir, config):
    summary = _train(exp, config, workdir, teacher_config)
    if finish is not None and not summary["preempted"] and not summary["complete"]:
      finish(summary)
  return summary


def _memory_in_use() -> str:
  """The first local device's memory in use and its peak, for the status line; empty on XLA:CPU,
  which keeps no such statistics."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_in_use" not in stats:
    return ""
  gib = 2.0 ** 30
  return (f"  memory {stats['bytes_in_use'] / gib:.2f} GiB"
          f" (peak {stats.get('peak_bytes_in_use', stats['bytes_in_use']) / gib:.2f})")


@contextlib.contextmanager
def _claim_workdir(workdir: str, config: ml_collections.ConfigDict):
  """Holds the workdir's lock for the run and checks the config against the run it holds (on
  process 0; the others follow its verdict). A refused run leaves nothing behind, not even the
  workdir when it made it."""
  name = "cm_jax_claim_workdir"
  if jax.process_index() != 0:
    error = parallel.from_process_0(name)
    if error:
      raise UserError(f"Process 0 refused the workdir: {error}")
    yield
    return
  created = not storage.exists(workdir)
  storage.makedirs(workdir)
  lock = workdir_lock.WorkdirLock(workdir, "cm_jax.train")
  try:
    lock.acquire()
    try:
      checkpoint.check_or_write_config(workdir, config)
    except BaseException:
      lock.release()
      raise
  except BaseException as e:  # the other processes wait for a verdict: always give one
    if created and storage.isdir(workdir) and not storage.listdir(workdir):
      storage.remove_empty_dir(workdir)
    parallel.from_process_0(name, str(e) or type(e).__name__)
    raise
  parallel.from_process_0(name, "")
  try:
    yield
  finally:
    lock.release()


def init_or_restore(exp: Experiment, config: ml_collections.ConfigDict,
                    ckpt: checkpoint.Checkpointer,
                    teacher_config: Optional[ml_collections.ConfigDict],
                    ) -> tuple[TrainState, Optional[teacher_lib.Teacher], Optional[dict]]:
  """(state, teacher, resumed meta) the run starts from. The one place that decides, in order:

  1. resume: the newest checkpoint in the workdir that restores (a damaged newer one is moved
     aside with a warning). A checkpoint means this run is part done, and its state (weights,
     optimizer, step = data position) is the only one that continues it: a resumed run never
     re-reads its teacher's weights as a start, nor its seed. Its teacher is loaded as the one
     the checkpoint recorded (that step, those weights, or a refusal), for the loss and the meta;
     the teacher's newer checkpoints are not picked up mid-run.
  2. teacher start: a new distillation run (teacher_config given) starts from its teacher's
     weights (teacher.init_student), its latest checkpoint.
  3. fresh: random weights from config.seed.

  teacher is None without teacher_config; resumed meta is None unless resumed.
  """
  state, resumed = ckpt.restore_latest_good(exp.abstract_state())
  if state is not None:
    teacher = None if teacher_config is None else teacher_lib.load(
        config, teacher_config, exp.mesh, recorded=resumed.get("teacher"))
    log.info("Resumed from step %d in %s", resumed["step"], ckpt.directory)
    return state, teacher, resumed
  if teacher_config is not None:
    teacher = teacher_lib.load(config, teacher_config, exp.mesh)
    state = teacher_lib.init_student(exp, int(config.seed), teacher)
    if parallel.fsdp_size(exp.mesh) > 1:  # init_student builds it replicated
      state = parallel.reshard(state, exp.state_sharding())
    return state, teacher, None
  return exp.init_state(int(config.seed)), None, None


def _train(exp: Experiment, config: ml_collections.ConfigDict, workdir: str,
           teacher_config) -> dict:
  tc = config.train
  global_batch = int(tc.batch_size)
  ckpt = checkpoint.Checkpointer(workdir, keep=int(tc.keep_checkpoints))
  state, teacher, resumed = init_or_restore(exp, config, ckpt, teacher_config)
  # Never donated, never saved; ECT only starts from its teacher and does not query it.
  frozen = teacher.ema_params if teacher is not None and exp.method.uses_teacher else None
  start = int(jax.device_get(state.step))
  num_steps = int(tc.num_steps)
  if start >= num_steps:
    ckpt.close()
    log.info("The run in %s is already complete: checkpoint step %d, train.num_steps=%d; "
             "nothing to do. Sample it with `python -m cm_jax.sample --workdir=%s`. (A longer run "
             "needs a new workdir: train.num_steps shapes the schedules.)", workdir, start,
             num_steps, workdir)
    return {"workdir": workdir, "start_step": start, "preempted": None, "complete": True,
            "step": start, "checkpoint_dir": ckpt.directory, "state": state, "experiment": exp}
  writer = metrics_lib.MetricWriter(storage.join(workdir, "tensorboard"),
                                    storage.join(workdir, METRICS_FILE), start_step=start)
  if start == 0:
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    writer.write_hparams({**checkpoint.flat_config(config),
                          "num_params": n_params})
    log.info("Training %s on %s: %d parameters, %d devices, global batch %d, %d steps.",
             config.method, config.data.name, n_params, exp.mesh.devices.size, global_batch,
             num_steps)

  batches = data.train_batches(config.data, global_batch_size=global_batch,
                               seed=int(config.seed), start_step=start)
  if jax.process_count() > 1:
    local = global_batch // jax.process_count()
    log.info("Process %d of %d: rows [%d, %d) of every global batch of %d, on %d local devices.",
             jax.process_index(), jax.process_count(), jax.process_index() * local,
             (jax.process_index() + 1) * local, global_batch, jax.local_device_count())
  skip = bool(tc.get("skip_nonfinite", False))
  train_step = make_train_step(exp.method, exp.tx, float(config.ema_rate), exp.mesh,
                               skip_nonfinite=skip, state_sharding=exp.state_sharding(),
                               grad_accum=int(tc.get("grad_accum", 1)))
  guard = _NonFiniteGuard(exp.mesh, ckpt, start, skip,
                          int((resumed or {}).get("skipped_steps", 0)))
  record = checkpoint.config_record(config)  # the run's identity, checked on every resume

  def save(s: int, state: TrainState) -> None:
    skipped = guard.before_save(s, state)
    ckpt.save(state, {"step": s, "data_position": s, "method": config.method, "config": record,
                      "skipped_steps": skipped,
                      **({} if teacher is None else {"teacher": teacher.meta})})

  periodic = (
      _Every(int(tc.log_every), _StatusLog(exp, writer, guard, start, num_steps, global_batch),
             at_last=True),
      _Every(int(tc.save_every), lambda s, state, _: save(s, state)),
      _Every(int(tc.sample_every),
             lambda s, state, _: save_grid(exp, state.ema_params, workdir, s, writer)),
  )
  summary = {"workdir": workdir, "start_step": start, "preempted": None, "complete": False}
  expect = _Expectation(start, num_steps)
  with _StopRequest() as stop:
    step = start
    while step < num_steps:
      batch = parallel.global_batch(next(batches), exp.mesh)
      if step == start and jax.process_count() > 1:
        # Compile first, then meet: the first collective finds every process ready (CPU gloo
        # gives up after 30 s; compiling can take longer on one process than another).
        train_step = train_step.lower(state, batch, frozen).compile()
        parallel.barrier(f"cm_jax_train_step_compiled_{start}")
      state, metrics = train_step(state, batch, frozen)
      guard.add(metrics["nonfinite"])
      step += 1
      expect.after(step, metrics)
      stopping = stop.poll(step)
      for action in periodic:
        if action.due(step, last=stopping or step == num_steps):
          action.run(step, state, metrics)
      if stopping:
        summary["preempted"] = stop.requested
        break

  save(step, state)
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
