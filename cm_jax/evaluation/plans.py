"""The sampling plans a workdir is scored with, in one place for the end-of-run report and
`cm_jax.evaluate`: consistency models at k steps (sigmas; TrigFlow and MeanFlow models at times),
denoisers by
their configured ODE solver. The 2-step level is the one `cm_jax.evaluate --search_ts` found for
the workdir when there is one, else `config.sample.two_step_sigma`."""
from __future__ import annotations

from typing import Optional, Sequence

from cm_jax import flow, karras, methods, sampling, trigflow
from cm_jax.errors import UserError
from cm_jax.evaluation import two_step


def two_step_sigma(config, workdir: Optional[str]) -> float:
  return (two_step.two_step_sigma(workdir, config)[0] if workdir
          else float(config.sample.two_step_sigma))


def sigma_plan(levels: karras.NoiseLevels, k: int, two_step_sigma: Optional[float]
               ) -> list[float]:
  """k steps of a consistency model in sigma: [sigma_max]; [sigma_max, two_step_sigma]; k > 2:
  the first k of a descending Karras grid of k + 1 levels."""
  if k == 1:
    return [levels.sigma_max]
  if k == 2:
    return [levels.sigma_max, float(two_step_sigma)]
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


def step_plans(config, levels: karras.NoiseLevels, steps: Sequence[str | int],
               workdir: Optional[str] = None) -> dict:
  """{"k-step": plan} for each k of `steps` ({solver name: EDMPlan} for a denoiser).

  Consistency models in sigma: `sigma_plan` with the 2-step level; in time (sCT, sCD, MeanFlow):
  `time_plan`.
  """
  spec = methods.spec(config.method)
  if spec.is_denoiser:
    plan = sampling.EDMPlan.from_config(config.sample)
    return {plan.name: plan}
  out = {}
  for s in steps:
    if not str(s).isdigit() or int(s) < 1:
      raise UserError(f"--steps takes positive integers, got {s!r}.")
    k = int(s)
    if spec.plans_in_time:
      out[f"{k}-step"] = time_plan(config, k)
    else:
      level = two_step_sigma(config, workdir) if k == 2 else None
      out[f"{k}-step"] = sigma_plan(levels, k, level)
  return out


def describe_plan(plan, in_time: bool = False) -> dict:
  """JSON-able: the levels of a consistency plan (`in_time`: its times), or the solver of an ODE
  plan; and the NFE."""
  if isinstance(plan, sampling.EDMPlan):
    return {"solver": plan.solver, "levels": plan.num_levels, "nfe": plan.nfe}
  return {("times" if in_time else "sigmas"): [float(s) for s in plan], "nfe": len(plan)}
