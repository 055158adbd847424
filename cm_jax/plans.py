"""Sampling plans, resolved in one place for every caller: the training previews, the end-of-run
report, `cm_jax.sample`, `cm_jax.edit`, `cm_jax.evaluate`, the bench and `cm_jax.load(...)`.

A plan is either decreasing consistency levels in the model's own time (sigmas; TrigFlow times in
(0, pi/2] for sCT / sCD; flow times in (0, 1] for MeanFlow) or, for a denoiser, an ODE solver
(`sampling.EDMPlan`). A 2-step plan in sigma goes through the level that
`cm_jax.evaluate --search_ts` found for the workdir (WORKDIR/eval/two_step_sigma.json) when there
is one, else through `config.sample.two_step_sigma`.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

from cm_jax import files, flow, karras, methods, sampling, storage, trigflow
from cm_jax.errors import UserError

SEARCH_FILE = "two_step_sigma.json"


# ----------------------------------------------------------------------------- the searched level

def search_path(workdir: str) -> str:
  return storage.join(workdir, "eval", SEARCH_FILE)


def load_search(workdir: str) -> dict | None:
  """The 2-step search's result, or None when no search was run (or the file is unreadable)."""
  p = search_path(workdir)
  if not storage.isfile(p):
    return None
  try:
    found = json.loads(storage.read_text(p))
    float(found["sigma"])
    return found
  except (OSError, ValueError, KeyError, TypeError):
    return None


def save_search(workdir: str, result: dict) -> str:
  p = search_path(workdir)
  files.write_json_atomically(p, result)
  return p


def two_step_sigma(config, workdir: Optional[str] = None) -> tuple[float, str]:
  """(sigma, where it came from): the workdir's searched level when there is one, else the
  config's."""
  found = load_search(workdir) if workdir else None
  if found is not None:
    return float(found["sigma"]), (f"ternary search ({search_path(workdir)}, checkpoint "
                                   f"{found.get('checkpoint_step')}, FID {found.get('fid')})")
  return float(config.sample.two_step_sigma), "config.sample.two_step_sigma"


# ----------------------------------------------------------------------------- k-step plans

def sigma_plan(levels: karras.NoiseLevels, k: int, two_step_level: Optional[float]
               ) -> list[float]:
  """k steps of a consistency model in sigma: [sigma_max]; [sigma_max, two_step_level]; k > 2:
  the first k of a descending Karras grid of k + 1 levels."""
  if k == 1:
    return [levels.sigma_max]
  if k == 2:
    return [levels.sigma_max, float(two_step_level)]
  return [float(x) for x in karras.karras_sigmas(k + 1, levels)[::-1][:k]]


def time_plan(config, k: int) -> list[float]:
  """k steps of a consistency model in time. TrigFlow (sCT, sCD): pi/2, then scm.two_step_t
  (k <= 2). MeanFlow: 1, then meanflow.two_step_t at k = 2; k > 2 steps of equal length."""
  if methods.spec(config.method).is_flow:
    return [1.0, float(config.meanflow.two_step_t)] if k == 2 else flow.uniform_times(k)
  if k > 2:
    raise UserError(f"method={config.method} has 1- and 2-step plans (TrigFlow times pi/2 and "
                    f"scm.two_step_t); for {k} steps give the times (cm_jax.sample --times).")
  return [trigflow.HALF_PI, float(config.scm.two_step_t)][:k]


# ----------------------------------------------------------------------------- the resolver

def numbers(values: Sequence, flag: str, kind=float) -> list:
  """A comma-list flag's entries as numbers; a bad entry names the flag."""
  out = []
  for v in values:
    try:
      out.append(kind(v))
    except (TypeError, ValueError):
      raise UserError(f"{flag}: {v!r} is not {'an integer' if kind is int else 'a number'} "
                      f"(got {','.join(map(str, values))}).") from None
  return out


def check_plan(config, plan: Sequence[float], in_sigma: bool = False) -> list[float]:
  """Consistency levels validated in the model's own time (`in_sigma`: in sigma whatever the
  model's time, as editing a MeanFlow model through its sigma-time consistency function)."""
  spec = methods.spec(config.method)
  if spec.is_flow and not in_sigma:
    checked = flow.check_times(plan)
  elif spec.is_trigflow and not in_sigma:
    checked = trigflow.check_times(plan)
  else:
    checked = sampling.check_sigmas(plan, karras.NoiseLevels.from_config(config.karras))
  return [float(s) for s in checked]


def resolve(config, *, workdir: Optional[str] = None, steps: Optional[int] = None,
            sigmas: Optional[Sequence] = None, ts: Optional[Sequence] = None, ts_grid: int = 18,
            times: Optional[Sequence] = None, edm_levels: Optional[int] = None,
            edm_solver: Optional[str] = None, in_sigma: bool = False):
  """The plan a model of `config` samples with, from what the caller gave (the sampling CLIs'
  flags of the same names; None = not given):

  - a denoiser: an ODE solver, `edm_levels` / `edm_solver` over the config's;
  - a consistency model in sigma (or any with `in_sigma`): `sigmas`, or `ts` indices into a
    descending Karras grid of `ts_grid` levels, or `steps` (default 1) through `sigma_plan`
    with the workdir's searched 2-step level;
  - a consistency model in time (sCT, sCD, MeanFlow): `times`, or `steps` through `time_plan`.

  Whatever does not apply to the model is refused with what to give instead, never ignored.
  """
  spec = methods.spec(config.method)
  given = lambda *pairs: [name for name, v in pairs if v is not None and v != []]
  where = f"{workdir or 'the model'} holds a method={config.method}"
  if steps is not None and steps < 1:
    raise UserError(f"--steps={steps}: give at least 1 sampling step.")
  if spec.is_denoiser:
    wrong = given(("--steps", steps), ("--sigmas", sigmas), ("--ts", ts), ("--times", times))
    if wrong:
      kind = "TrigFlow" if spec.is_trigflow else "EDM"
      raise UserError(f"{where} model, an {kind} denoiser sampled by an ODE solver: use "
                      f"--edm_levels and --edm_solver, not {', '.join(wrong)}.")
    default = sampling.EDMPlan.from_config(config.sample)
    return sampling.EDMPlan(edm_levels or default.num_levels, edm_solver or default.solver)
  if edm_levels is not None or edm_solver is not None:
    raise UserError(f"--edm_levels and --edm_solver are for EDM workdirs; {where} consistency "
                    "model: use --steps, " + ("--times" if spec.plans_in_time and not in_sigma
                                              else "--sigmas or --ts") + ".")
  if spec.plans_in_time and not in_sigma:
    wrong = given(("--sigmas", sigmas), ("--ts", ts))
    if wrong:
      span = "[0, 1]" if spec.is_flow else "(0, pi/2]"
      raise UserError(f"{where} model in time t in {span}: use --steps or --times, not "
                      f"{', '.join(wrong)}.")
    plan = numbers(times, "--times") if times else time_plan(config, steps or 1)
    unit = "times"
  else:
    if times:
      raise UserError(f"--times is for sCT / sCD / MeanFlow workdirs; {where} model "
                      + ("edited in sigma" if in_sigma else "in sigma")
                      + ": use --steps, --sigmas or --ts.")
    if sigmas and ts:
      raise UserError("Give --sigmas or --ts, not both.")
    levels = karras.NoiseLevels.from_config(config.karras)
    if ts:
      if ts_grid < 2:
        raise UserError(f"--ts_grid={ts_grid}: the grid --ts indexes needs at least 2 levels.")
      plan = [float(s) for s in sampling.sigmas_from_ts(numbers(ts, "--ts", int), ts_grid,
                                                        levels)]
    elif sigmas:
      plan = numbers(sigmas, "--sigmas")
    else:
      k = steps or 1  # only a 2-step plan reads the searched level (a file, maybe in a bucket)
      plan = sigma_plan(levels, k, two_step_sigma(config, workdir)[0] if k == 2 else None)
    unit = "levels"
  if steps is not None and len(plan) != steps:
    raise UserError(f"--steps={steps} but {len(plan)} {unit} were given: {plan}.")
  return check_plan(config, plan, in_sigma)


def step_plans(config, steps: Sequence[str | int], workdir: Optional[str] = None) -> dict:
  """{"k-step": plan} for each k of `steps` ({solver name: EDMPlan} for a denoiser): what the
  report and `cm_jax.evaluate` score."""
  if methods.spec(config.method).is_denoiser:
    plan = resolve(config)
    return {plan.name: plan}
  out = {}
  for s in steps:
    if not str(s).isdigit() or int(s) < 1:
      raise UserError(f"--steps takes positive integers, got {s!r}.")
    out[f"{int(s)}-step"] = resolve(config, workdir=workdir, steps=int(s))
  return out


def describe_plan(plan, in_time: bool = False) -> dict:
  """JSON-able: the levels of a consistency plan (`in_time`: its times), or the solver of an ODE
  plan; and the NFE."""
  if isinstance(plan, sampling.EDMPlan):
    return {"solver": plan.solver, "levels": plan.num_levels, "nfe": plan.nfe}
  return {("times" if in_time else "sigmas"): [float(s) for s in plan], "nfe": len(plan)}
