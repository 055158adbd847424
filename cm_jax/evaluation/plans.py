"""The sampling plans a workdir is scored with, in one place for the end-of-run report and
`cm_jax.evaluate`: consistency models at k steps (sigmas; TrigFlow models at times), denoisers by
their configured ODE solver. The 2-step level is the one `cm_jax.evaluate --search_ts` found for
the workdir when there is one, else `config.sample.two_step_sigma`."""
from __future__ import annotations

from typing import Optional, Sequence

from cm_jax import karras, methods, sampling, trigflow
from cm_jax.errors import UserError
from cm_jax.evaluation import two_step


def two_step_sigma(config, workdir: Optional[str]) -> float:
  return (two_step.two_step_sigma(workdir, config)[0] if workdir
          else float(config.sample.two_step_sigma))


def step_plans(config, levels: karras.NoiseLevels, steps: Sequence[str | int],
               workdir: Optional[str] = None) -> dict:
  """{"k-step": plan} for each k of `steps` ({solver name: EDMPlan} for a denoiser).

  k = 1: [sigma_max]; 2: [sigma_max, the 2-step level]; k > 2: the first k of a Karras grid of
  k + 1 levels. TrigFlow consistency models (sCT, sCD): times pi/2 and scm.two_step_t, k <= 2.
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
    if spec.is_trigflow:
      if k > 2:
        raise UserError(f"{config.method} workdirs are evaluated at --steps=1,2 (TrigFlow "
                        f"times); got {k}.")
      out[f"{k}-step"] = [trigflow.HALF_PI, float(config.scm.two_step_t)][:k]
    elif k == 1:
      out["1-step"] = [levels.sigma_max]
    elif k == 2:
      out["2-step"] = [levels.sigma_max, two_step_sigma(config, workdir)]
    else:
      out[f"{k}-step"] = [float(x) for x in karras.karras_sigmas(k + 1, levels)[::-1][:k]]
  return out


def describe_plan(plan, trigflow_time: bool = False) -> dict:
  """JSON-able: the levels of a consistency plan (TrigFlow: its times), or the solver of an ODE
  plan; and the NFE."""
  if isinstance(plan, sampling.EDMPlan):
    return {"solver": plan.solver, "levels": plan.num_levels, "nfe": plan.nfe}
  return {("times" if trigflow_time else "sigmas"): [float(s) for s in plan], "nfe": len(plan)}
