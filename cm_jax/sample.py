"""python -m cm_jax.sample --workdir=W --steps=1 [--sigmas=80,2.5 | --ts=0,11,17 --ts_grid=18]
                         --num_samples=N --out=S.npz [--grid=G.png] [--checkpoint=latest|STEP]
                         [--labels=random|3|0,1,2,...]
An EDM workdir is sampled by an ODE solver instead: [--edm_levels=18] [--edm_solver=heun|euler].

Writes `arr_0`: uint8 [N, H, W, C] (the layout FID tools exchange) and, for a class-conditional
model, `arr_1`: int32 [N] labels (as the ADM sampler does). Sample i depends only on (--seed, i,
the levels, label i), not on the batch size or the device count.
"""
from __future__ import annotations


import jax
import numpy as np
from absl import app, flags

from cm_jax import cli, files, images, karras, parallel, sampling
from cm_jax.errors import UserError
from cm_jax.evaluation import plans, two_step
from cm_jax import api

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (network evaluations). Default: the "
                              "number of --sigmas, else 1.")
_SIGMAS = flags.DEFINE_list("sigmas", None, "Decreasing noise levels, the first usually "
                            "sigma_max (80). Default: 1 step -> [80]; 2 steps -> [80, "
                            "config.sample.two_step_sigma] (or the level in "
                            "W/eval/two_step_sigma.json, which `cm_jax.evaluate --search_ts` "
                            "writes); k steps -> the first k of a descending Karras grid of k+1 "
                            "levels.")
_TS = flags.DEFINE_list("ts", None, "Released convention: indices into a descending Karras grid "
                        "of --ts_grid levels, e.g. 0,11,17 of 18; the last index is the end "
                        "(sigma_min) and is not evaluated.")
_TS_GRID = flags.DEFINE_integer("ts_grid", 18, "Levels of the grid --ts indexes.")
_TIMES = flags.DEFINE_list("times", None, "sCT / sCD workdirs (TrigFlow time): decreasing times "
                           "in (0, pi/2]. Default: 1 step -> [pi/2]; 2 steps -> [pi/2, "
                           "config.scm.two_step_t]. MeanFlow workdirs: decreasing times in "
                           "(0, 1], the trajectory ending at 0. Default: [1]; 2 steps -> [1, "
                           "config.meanflow.two_step_t]; k steps -> k of equal length.")
_NUM = flags.DEFINE_integer("num_samples", 64, "How many samples.")
_OUT = flags.DEFINE_string("out", None, "Output .npz path.")
_GRID = flags.DEFINE_string("grid", None, "Also write a PNG grid of (up to 256 of) the samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Samples per jitted call (memory only).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest' or a checkpoint step.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "online"], "Which weights to sample.")
_LABELS = flags.DEFINE_list("labels", None, "Class-conditional models: 'random' (the default; "
                            "label i drawn from --seed and i), one class for all, or one per "
                            "sample (comma list). Written as arr_1.")
_EDM_LEVELS = flags.DEFINE_integer("edm_levels", None, "EDM workdirs: levels of the solver's "
                                   "descending Karras grid, then a last Euler step to 0. Default: "
                                   "config.sample.edm_levels (18; Heun: 35 evaluations).")
_EDM_SOLVER = flags.DEFINE_enum("edm_solver", None, ["heun", "euler"], "EDM workdirs: the ODE "
                                "solver. Default: config.sample.edm_solver (heun).")
flags.mark_flags_as_required(["workdir", "out"])


def resolve_sigmas(levels: karras.NoiseLevels, steps, sigmas, ts, ts_grid, two_step_sigma):
  """The decreasing levels the sampler evaluates the consistency function at."""
  if sigmas and ts:
    raise UserError("Give --sigmas or --ts, not both.")
  if steps is not None and steps < 1:
    raise UserError(f"--steps={steps}: give at least 1 sampling step.")
  if ts:
    if ts_grid < 2:
      raise UserError(f"--ts_grid={ts_grid}: the grid --ts indexes needs at least 2 levels.")
    out = sampling.sigmas_from_ts(numbers(ts, "--ts", int), ts_grid, levels)
  elif sigmas:
    out = np.asarray(numbers(sigmas, "--sigmas", float))
  else:
    out = plans.sigma_plan(levels, steps or 1, two_step_sigma)
  if steps is not None and len(out) != steps:
    raise UserError(f"--steps={steps} but {len(out)} levels were given: {list(out)}.")
  return [float(s) for s in out]


def numbers(values, flag: str, kind=float) -> list:
  """A comma-list flag as numbers; a bad entry names the flag."""
  out = []
  for v in values:
    try:
      out.append(kind(v))
    except ValueError:
      raise UserError(f"{flag}: {v!r} is not {'an integer' if kind is int else 'a number'} "
                      f"(got {','.join(values)}).") from None
  return out


def resolve_plan(exp):
  """Consistency levels from --steps/--sigmas/--ts (sCT / sCD / MeanFlow: --steps/--times), or a
  denoiser workdir's ODE solver."""
  if exp.plans_in_time and not exp.is_denoiser:
    return resolve_times(exp)
  if _TIMES.value:
    raise UserError(f"--times is for sCT / sCD / MeanFlow workdirs; {_WORKDIR.value} holds a "
                    f"method={exp.config.method} model.")
  if exp.is_denoiser:
    given = [name for name, v in (("--steps", _STEPS.value), ("--sigmas", _SIGMAS.value),
                                  ("--ts", _TS.value)) if v]
    if given:
      raise UserError(f"{_WORKDIR.value} holds an EDM denoiser, sampled by an ODE solver: use "
                      f"--edm_levels and --edm_solver, not {', '.join(given)}.")
    default = sampling.EDMPlan.from_config(exp.config.sample)
    return sampling.EDMPlan(_EDM_LEVELS.value or default.num_levels,
                            _EDM_SOLVER.value or default.solver)
  if _EDM_LEVELS.value or _EDM_SOLVER.value:
    raise UserError(f"--edm_levels and --edm_solver are for EDM workdirs; {_WORKDIR.value} holds "
                    f"a method={exp.config.method} consistency model: use --steps, --sigmas or "
                    "--ts.")
  # 2 steps: the level `python -m cm_jax.evaluate --search_ts` chose, else the config's.
  return resolve_sigmas(exp.levels, _STEPS.value, _SIGMAS.value, _TS.value, _TS_GRID.value,
                        two_step.two_step_sigma(_WORKDIR.value, exp.config)[0])


def resolve_times(exp):
  """Consistency times (TrigFlow, MeanFlow): --times, or the k-step plan of
  evaluation.plans.time_plan (the one the report and `cm_jax.evaluate` use)."""
  given = [name for name, v in (("--sigmas", _SIGMAS.value), ("--ts", _TS.value),
                                ("--edm_levels", _EDM_LEVELS.value),
                                ("--edm_solver", _EDM_SOLVER.value)) if v]
  span = "[0, 1]" if exp.is_flow else "(0, pi/2]"
  if given:
    raise UserError(f"{_WORKDIR.value} holds a method={exp.config.method} model in time t in "
                    f"{span}: use --steps or --times, not {', '.join(given)}.")
  steps = _STEPS.value
  if steps is not None and steps < 1:
    raise UserError(f"--steps={steps}: give at least 1 sampling step.")
  out = (numbers(_TIMES.value, "--times", float) if _TIMES.value
         else plans.time_plan(exp.config, steps or 1))
  if steps is not None and len(out) != steps:
    raise UserError(f"--steps={steps} but {len(out)} times were given: {out}.")
  return exp.check_plan(out)


def parse_labels(values):
  """--labels list -> None, 'random' or an int array (validated against the model later)."""
  if not values:
    return None
  if len(values) == 1 and values[0] == "random":
    return "random"
  try:
    return np.asarray([int(v) for v in values])
  except ValueError:
    raise UserError(f"--labels must be 'random' or integers, got {','.join(values)!r}.") from None


def load_params(workdir: str, which: str = "ema", step: str = "latest"):
  """(experiment, params, step) restored from a workdir; clear errors for missing/bad ones."""
  if step != "latest" and not step.isdigit():
    raise UserError(f"--checkpoint must be 'latest' or a step number, got {step!r}.")
  model = api.load(workdir, step, which)
  return model.experiment, model.params, model.step


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  with cli.user_errors_exit():
    parallel.maybe_initialize_distributed()  # several processes: launch/train.sh --cli
    if _NUM.value < 1:
      raise UserError("--num_samples must be at least 1.")
    if _BATCH.value < 1:
      raise UserError(f"--batch_size={_BATCH.value}: give at least 1 sample per call.")
    files.check_output_file(_OUT.value, "--out", ".npz")
    if _GRID.value:
      files.check_output_file(_GRID.value, "--grid", ".png")
    exp, params, step = load_params(_WORKDIR.value, _PARAMS.value, _CHECKPOINT.value)
    plan = resolve_plan(exp)
    labels = exp.resolve_labels(parse_labels(_LABELS.value), _NUM.value, seed=_SEED.value)
    samples = exp.generate(params, plan, _NUM.value, seed=_SEED.value,
                           batch_size=_BATCH.value, labels=labels)
    if jax.process_index() == 0:
      files.write_npz_atomically(_OUT.value, arr_0=samples,
                                 **({} if labels is None else {"arr_1": labels}))
      how = (f"with {plan.solver} over {plan.num_levels} levels ({plan.nfe} evaluations)"
             if isinstance(plan, sampling.EDMPlan)
             else f"at {'times' if exp.plans_in_time else 'sigmas'} {plan}")
      print(f"Wrote {len(samples)} samples of checkpoint step {step} {how} to {_OUT.value}")
      if _GRID.value:
        images.save_png(_GRID.value, images.make_grid(samples[:256]), scale=4)
        print(f"Grid: {_GRID.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
