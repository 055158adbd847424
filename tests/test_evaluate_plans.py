"""The sampling plans `cm_jax.evaluate` resolves for each kind of workdir."""
import math

import pytest

from cm_jax import evaluate, karras
from cm_jax.errors import UserError
from cm_jax.train.experiment import Experiment
from configs import digits


def test_trigflow_workdirs_are_evaluated_at_pi_over_2_and_the_two_step_time(tmp_path):
  exp = Experiment.from_config(digits.get_config("method=sct,runlocal"))
  plans = evaluate.plans_for(exp, str(tmp_path), ["1", "2"])
  assert plans == {"1-step": [math.pi / 2], "2-step": [math.pi / 2, 1.1]}
  with pytest.raises(UserError, match="--steps=1,2"):
    evaluate.plans_for(exp, str(tmp_path), ["3"])


def test_sigma_workdirs_take_the_configured_level_and_karras_grids(tmp_path):
  config = digits.get_config("method=ict,runlocal")
  exp = Experiment.from_config(config)
  plans = evaluate.plans_for(exp, str(tmp_path), ["1", "2", "3"])
  assert plans["1-step"] == [80.0]
  assert plans["2-step"] == [80.0, config.sample.two_step_sigma]
  grid = karras.karras_sigmas(4, exp.levels)[::-1][:3]
  assert plans["3-step"] == pytest.approx(list(grid))
