"""The flags the sampling CLIs share (`cm_jax.sample`, `cm_jax.edit`): one definition, one meaning
and one help text per name. absl flags are global to a process, so each entry point defines the
groups it reads, and its `--help` lists exactly those."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from absl import flags

from cm_jax import api, files, plans
from cm_jax.errors import UserError

FlagHolder = flags.FlagHolder


@dataclasses.dataclass(frozen=True)
class CheckpointFlags:
  workdir: FlagHolder
  checkpoint: FlagHolder
  params: FlagHolder

  def load(self) -> api.Model:
    return api.load(self.workdir.value, self.checkpoint.value, self.params.value)


def define_checkpoint_flags() -> CheckpointFlags:
  return CheckpointFlags(
      workdir=flags.DEFINE_string("workdir", None, "A training workdir.", required=True),
      checkpoint=flags.DEFINE_string("checkpoint", "latest", "'latest' or a checkpoint step."),
      params=flags.DEFINE_enum("params", "ema", ["ema", "online"], "Which weights: the "
                               "evaluation EMA or the online weights."))


@dataclasses.dataclass(frozen=True)
class PlanFlags:
  """The sampling plan's flags; `times` and the ODE solver's are absent where a command cannot
  use them (editing runs consistency levels in sigma)."""
  steps: FlagHolder
  sigmas: FlagHolder
  ts: FlagHolder
  ts_grid: FlagHolder
  times: Optional[FlagHolder] = None
  edm_levels: Optional[FlagHolder] = None
  edm_solver: Optional[FlagHolder] = None

  def given(self) -> list[str]:
    """The level flags given on the command line (for commands that take none of them)."""
    return [f"--{h.name}" for h in (self.steps, self.sigmas, self.ts) if h.present]

  def resolve(self, config, workdir: str, in_sigma: bool = False):
    """The plan through cm_jax.plans.resolve, the resolver every other caller uses."""
    value = lambda h: None if h is None else h.value
    return plans.resolve(config, workdir=workdir, steps=self.steps.value,
                         sigmas=self.sigmas.value, ts=self.ts.value, ts_grid=self.ts_grid.value,
                         times=value(self.times), edm_levels=value(self.edm_levels),
                         edm_solver=value(self.edm_solver), in_sigma=in_sigma)


def define_plan_flags(times: bool = True, ode: bool = True) -> PlanFlags:
  holders = dict(
      steps=flags.DEFINE_integer(
          "steps", None, "Sampling steps (network evaluations). Default: as many as the levels "
          "given, else 1."),
      sigmas=flags.DEFINE_list(
          "sigmas", None, "Decreasing noise levels, the first usually sigma_max (80). Default: "
          "1 step -> [80]; 2 steps -> [80, the level W/eval/two_step_sigma.json holds (written "
          "by `cm_jax.evaluate --search_ts`), else config.sample.two_step_sigma]; k steps -> the "
          "first k of a descending Karras grid of k+1 levels."),
      ts=flags.DEFINE_list(
          "ts", None, "Released convention: indices into a descending Karras grid of --ts_grid "
          "levels, e.g. 0,11,17 of 18; the last index is the end (sigma_min), not evaluated."),
      ts_grid=flags.DEFINE_integer("ts_grid", 18, "Levels of the grid --ts indexes."))
  if times:
    holders["times"] = flags.DEFINE_list(
        "times", None, "sCT / sCD workdirs (TrigFlow time): decreasing times in (0, pi/2]. "
        "Default: 1 step -> [pi/2]; 2 steps -> [pi/2, config.scm.two_step_t]. MeanFlow "
        "workdirs: decreasing times in (0, 1], the trajectory ending at 0. Default: [1]; 2 steps "
        "-> [1, config.meanflow.two_step_t]; k steps -> k of equal length.")
  if ode:
    holders["edm_levels"] = flags.DEFINE_integer(
        "edm_levels", None, "EDM workdirs: levels of the solver's descending Karras grid, then a "
        "last Euler step to 0. Default: config.sample.edm_levels (18; Heun: 35 evaluations).")
    holders["edm_solver"] = flags.DEFINE_enum(
        "edm_solver", None, ["heun", "euler"], "EDM workdirs: the ODE solver. Default: "
        "config.sample.edm_solver (heun).")
  return PlanFlags(**holders)


@dataclasses.dataclass(frozen=True)
class DrawFlags:
  """How the samples (or edits) are drawn: the seed, the labels and the batch per call."""
  seed: FlagHolder
  labels: FlagHolder
  batch_size: FlagHolder

  def check(self) -> None:
    if self.batch_size.value < 1:
      raise UserError(f"--batch_size={self.batch_size.value}: give at least 1 per call.")

  def parsed_labels(self):
    """None (not given), 'random' or an int array (checked against the model later)."""
    values = self.labels.value
    if not values:
      return None
    if len(values) == 1 and values[0] == "random":
      return "random"
    try:
      return np.asarray([int(v) for v in values])
    except ValueError:
      raise UserError(f"--labels must be 'random' or integers, got {','.join(values)!r}.") from None


def define_draw_flags() -> DrawFlags:
  return DrawFlags(
      seed=flags.DEFINE_integer("seed", 0, "Sampling seed: item i depends only on the seed, i "
                                "and its label, not on the batch size or the device count."),
      labels=flags.DEFINE_list("labels", None, "Class-conditional models: 'random' (label i "
                               "drawn from --seed and i), one class for all, or one per item "
                               "(comma list). Written as arr_1."),
      batch_size=flags.DEFINE_integer("batch_size", 256, "Items per jitted call (memory only)."))


@dataclasses.dataclass(frozen=True)
class OutputFlags:
  out: FlagHolder
  grid: FlagHolder

  def check(self) -> None:
    """Both outputs writable before any work."""
    files.check_output_file(self.out.value, "--out", ".npz")
    if self.grid.value:
      files.check_output_file(self.grid.value, "--grid", ".png")


def define_output_flags(what: str) -> OutputFlags:
  return OutputFlags(
      out=flags.DEFINE_string("out", None, f"Output .npz: arr_0 = uint8 [N, H, W, C] {what}, "
                              "arr_1 = int32 labels of a class-conditional model.", required=True),
      grid=flags.DEFINE_string("grid", None, "Also write a PNG grid of (up to 256 of) them."))
