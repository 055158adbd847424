"""cm_jax.plans: the one resolver behind every sampling caller (the sample and edit CLIs, the
report, `cm_jax.evaluate`, previews and `cm_jax.load`)."""
import json
import math
import os
import re

import pytest

from cm_jax import karras
from cm_jax.errors import UserError
from cm_jax import plans
from cm_jax.train.experiment import Experiment
from configs import digits


def test_trigflow_workdirs_are_evaluated_at_pi_over_2_and_the_two_step_time(tmp_path):
  exp = Experiment.from_config(digits.get_config("method=sct,runlocal"))
  got = plans.step_plans(exp.config, ["1", "2"], str(tmp_path))
  assert got == {"1-step": [math.pi / 2], "2-step": [math.pi / 2, exp.config.scm.two_step_t]}
  assert exp.config.scm.two_step_t == 0.2  # the digits sCT's level
  with pytest.raises(UserError, match="has 1- and 2-step plans"):
    plans.step_plans(exp.config, ["3"], str(tmp_path))


def test_meanflow_workdirs_are_evaluated_at_times_from_1():
  """1 step from t = 1; 2 through meanflow.two_step_t; k steps of equal length; times in the
  description."""
  config = digits.get_config("method=meanflow,runlocal")
  got = plans.step_plans(config, ["1", "2", "4"])
  assert got == {"1-step": [1.0], "2-step": [1.0, 0.5], "4-step": [1.0, 0.75, 0.5, 0.25]}
  assert plans.describe_plan(got["2-step"], in_time=True) == {"times": [1.0, 0.5], "nfe": 2}


def test_sigma_workdirs_take_the_configured_level_and_karras_grids(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  exp = Experiment.from_config(config)
  got = plans.step_plans(exp.config, ["1", "2", "3"], str(tmp_path))
  assert got["1-step"] == [80.0]
  assert got["2-step"] == [80.0, config.sample.two_step_sigma]
  grid = karras.karras_sigmas(4, exp.levels)[::-1][:3]
  assert got["3-step"] == pytest.approx(list(grid))


def test_the_searched_two_step_level_wins_over_the_config(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  os.makedirs(tmp_path / "eval")
  (tmp_path / "eval" / "two_step_sigma.json").write_text(json.dumps({"sigma": 0.7}))
  assert plans.step_plans(config, [2], str(tmp_path))["2-step"] == [80.0, 0.7]
  assert plans.step_plans(config, [2])["2-step"] == [80.0, 2.5]


def test_a_denoiser_is_scored_by_its_ode_solver(tmp_path):
  config = digits.get_config("method=edm,runlocal")
  (name, plan), = plans.step_plans(config, [1, 2]).items()
  assert name == "heun-18" and plans.describe_plan(plan) == {"solver": "heun", "levels": 18,
                                                             "nfe": 35}


def test_resolve_takes_levels_ts_or_steps_and_checks_them(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  assert plans.resolve(config) == [80.0]
  assert plans.resolve(config, sigmas=["80", "2.5"]) == [80.0, 2.5]
  assert plans.resolve(config, steps=2, sigmas=[80, 2.5]) == [80.0, 2.5]
  os.makedirs(tmp_path / "eval")
  (tmp_path / "eval" / "two_step_sigma.json").write_text(json.dumps({"sigma": 0.7}))
  assert plans.resolve(config, workdir=str(tmp_path), steps=2) == [80.0, 0.7]
  for kwargs, message in [
      (dict(steps=0), "--steps=0: give at least 1"),
      (dict(steps=3, sigmas=[80, 2.5]), "--steps=3 but 2 levels were given"),
      (dict(sigmas=[80], ts=[0, 17]), "Give --sigmas or --ts, not both"),
      (dict(sigmas=["80", "x"]), "--sigmas: 'x' is not a number"),
      (dict(sigmas=[2.5, 80]), "decrease strictly"),
      (dict(ts=[0, 17], ts_grid=1), "--ts_grid=1"),
      (dict(times=[1.0]), "--times is for sCT / sCD / MeanFlow workdirs"),
      (dict(edm_levels=18), "--edm_levels and --edm_solver are for EDM workdirs"),
  ]:
    with pytest.raises(UserError, match=re.escape(message)):
      plans.resolve(config, **kwargs)


def test_resolve_refuses_what_a_model_cannot_use():
  edm = digits.get_config("method=edm,runlocal")
  assert plans.resolve(edm, edm_levels=6, edm_solver="euler").name == "euler-6"
  with pytest.raises(UserError, match="an EDM denoiser sampled by an ODE solver: use "
                     "--edm_levels and --edm_solver, not --steps"):
    plans.resolve(edm, steps=1)
  meanflow = digits.get_config("method=meanflow,runlocal")
  assert plans.resolve(meanflow, times=["1", "0.5"]) == [1.0, 0.5]
  with pytest.raises(UserError, match=re.escape("in time t in [0, 1]: use --steps or --times, "
                                                "not --sigmas")):
    plans.resolve(meanflow, sigmas=[80])
  with pytest.raises(UserError, match="MeanFlow sampling times must lie in"):
    plans.resolve(meanflow, times=[2.0])
  # Editing a MeanFlow model runs in sigma, through its sigma-time consistency function.
  assert plans.resolve(meanflow, steps=2, in_sigma=True) == [80.0, meanflow.sample.two_step_sigma]
  sct = digits.get_config("method=sct,runlocal")
  assert plans.resolve(sct) == [math.pi / 2]
  with pytest.raises(UserError, match="use --steps, --times"):
    plans.resolve(sct, edm_solver="heun")
