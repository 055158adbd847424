"""The sampling plans a workdir is scored with (the report and `cm_jax.evaluate`)."""
import json
import math
import os

import pytest

from cm_jax import karras
from cm_jax.errors import UserError
from cm_jax.evaluation import plans
from cm_jax.train.experiment import Experiment
from configs import digits


def test_trigflow_workdirs_are_evaluated_at_pi_over_2_and_the_two_step_time(tmp_path):
  exp = Experiment.from_config(digits.get_config("method=sct,runlocal"))
  got = plans.step_plans(exp.config, exp.levels, ["1", "2"], str(tmp_path))
  assert got == {"1-step": [math.pi / 2], "2-step": [math.pi / 2, exp.config.scm.two_step_t]}
  assert exp.config.scm.two_step_t == 0.2  # the digits sCT's level
  with pytest.raises(UserError, match="has 1- and 2-step plans"):
    plans.step_plans(exp.config, exp.levels, ["3"], str(tmp_path))


def test_meanflow_workdirs_are_evaluated_at_times_from_1():
  """1 step from t = 1; 2 through meanflow.two_step_t; k steps of equal length; times in the
  description."""
  config = digits.get_config("method=meanflow,runlocal")
  got = plans.step_plans(config, karras.NoiseLevels(), ["1", "2", "4"])
  assert got == {"1-step": [1.0], "2-step": [1.0, 0.5], "4-step": [1.0, 0.75, 0.5, 0.25]}
  assert plans.describe_plan(got["2-step"], in_time=True) == {"times": [1.0, 0.5], "nfe": 2}


def test_sigma_workdirs_take_the_configured_level_and_karras_grids(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  exp = Experiment.from_config(config)
  got = plans.step_plans(exp.config, exp.levels, ["1", "2", "3"], str(tmp_path))
  assert got["1-step"] == [80.0]
  assert got["2-step"] == [80.0, config.sample.two_step_sigma]
  grid = karras.karras_sigmas(4, exp.levels)[::-1][:3]
  assert got["3-step"] == pytest.approx(list(grid))


def test_the_searched_two_step_level_wins_over_the_config(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  exp = Experiment.from_config(config)
  os.makedirs(tmp_path / "eval")
  (tmp_path / "eval" / "two_step_sigma.json").write_text(json.dumps({"sigma": 0.7}))
  assert plans.step_plans(config, exp.levels, [2], str(tmp_path))["2-step"] == [80.0, 0.7]
  assert plans.step_plans(config, exp.levels, [2])["2-step"] == [80.0, 2.5]


def test_a_denoiser_is_scored_by_its_ode_solver(tmp_path):
  config = digits.get_config("method=edm,runlocal")
  exp = Experiment.from_config(config)
  (name, plan), = plans.step_plans(config, exp.levels, [1, 2]).items()
  assert name == "heun-18" and plans.describe_plan(plan) == {"solver": "heun", "levels": 18,
                                                             "nfe": 35}
