"""Sampling: sample i depends on (seed, i) only, ts indices, per-sample labels.

(The sample CLI's --labels runs in tests/test_edit_cli.py, on its class-conditional workdir.)
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from cm_jax import karras, plans, sampling
from cm_jax.train.experiment import Experiment
from configs import digits
from tests import subprocess_env
from tests.helpers.params import random_params

LEVELS = karras.NoiseLevels()


def experiment(class_conditional=False):
  config = digits.get_config("method=ict,runlocal")
  config.model.class_conditional = class_conditional
  exp = Experiment.from_config(config)
  return exp, random_params(exp)


@pytest.fixture(scope="module")
def unconditional():
  return experiment()


@pytest.fixture(scope="module")
def conditional():
  return experiment(class_conditional=True)


def test_sample_i_is_the_same_for_batch_sizes_1_7_64(unconditional):
  exp, params = unconditional
  by_size = {b: exp.generate(params, [80.0, 2.5], 64, seed=5, batch_size=b) for b in (64, 7, 1)}
  assert by_size[64].shape == (64, 16, 16, 1) and by_size[64].std() > 5
  np.testing.assert_array_equal(by_size[7], by_size[64])
  np.testing.assert_array_equal(by_size[1], by_size[64])
  # first_index continues the same sequence; another seed gives other samples.
  np.testing.assert_array_equal(
      exp.generate(params, [80.0, 2.5], 7, seed=5, first_index=30), by_size[64][30:37])
  assert not np.array_equal(exp.generate(params, [80.0, 2.5], 7, seed=6), by_size[64][:7])


def test_8_devices_match_1():
  out = subprocess.run([sys.executable, "-m", "tests.helpers.multidevice_sample"],
                       env=subprocess_env(devices=8), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["sample_spread"] > 5, r
  assert r["samples_equal"], r


def spec_sigma(i, steps):
  """docs/maths.md §8: index i of a descending grid of `steps` levels."""
  return (80 ** (1 / 7) + i / (steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7


@pytest.mark.parametrize("ts,steps", [((0, 11, 17), 18), ((0, 22, 39), 40), ((0, 106, 200), 201),
                                      ((0, 67, 150), 151), ((0, 62, 150), 151)])
def test_released_ts_map_to_spec_sigmas(ts, steps):
  got = sampling.sigmas_from_ts(ts, steps, LEVELS)
  # The last index is the end of the trajectory (sigma_min): not evaluated.
  np.testing.assert_allclose(got, [spec_sigma(ts[0], steps), spec_sigma(ts[1], steps)],
                             rtol=1e-10)
  assert got[0] == pytest.approx(80.0)
  config = digits.get_config("method=ict,runlocal")
  np.testing.assert_allclose(plans.resolve(config, ts=[str(t) for t in ts], ts_grid=steps), got)


def test_ts_edge_cases():
  np.testing.assert_allclose(sampling.sigmas_from_ts([0], 18, LEVELS), [80.0])
  np.testing.assert_allclose(sampling.sigmas_from_ts([0, 5, 9, 17], 18, LEVELS),
                             [spec_sigma(i, 18) for i in (0, 5, 9)], rtol=1e-10)
  with pytest.raises(ValueError, match="must lie in"):
    sampling.sigmas_from_ts([17], 18, LEVELS)  # sigma_min itself is not a sampling level
  with pytest.raises(ValueError, match="ts indices must increase strictly"):
    sampling.sigmas_from_ts([11, 0, 17], 18, LEVELS)
  with pytest.raises(ValueError, match="got 0,17,11"):  # not a level a rounding off sigma_min
    sampling.sigmas_from_ts([0, 17, 11], 18, LEVELS)
  with pytest.raises(ValueError, match="ts indices"):
    sampling.sigmas_from_ts([0, 18], 18, LEVELS)


def test_labels_are_drawn_per_sample(conditional):
  exp, _ = conditional
  full = exp.resolve_labels("random", 64, seed=2)
  assert full.dtype == np.int32 and full.min() >= 0 and full.max() <= 9
  assert len(set(full.tolist())) >= 8
  np.testing.assert_array_equal(exp.resolve_labels(None, 7, seed=2), full[:7])
  np.testing.assert_array_equal(exp.resolve_labels("random", 7, seed=2, first_index=40),
                                full[40:47])
  assert not np.array_equal(exp.resolve_labels("random", 64, seed=3), full)
  np.testing.assert_array_equal(exp.resolve_labels(np.asarray([4]), 3, seed=0), [4, 4, 4])
  with pytest.raises(ValueError, match=r"\[0, 9\]"):
    exp.resolve_labels(np.asarray([10]), 3, seed=0)
  with pytest.raises(ValueError, match="2 labels for 3 samples"):
    exp.resolve_labels(np.asarray([1, 2]), 3, seed=0)


def test_class_conditional_samples(conditional, unconditional):
  exp, params = conditional
  by_size = {b: exp.generate(params, [80.0], 8, seed=1, batch_size=b) for b in (8, 3)}
  np.testing.assert_array_equal(by_size[3], by_size[8])
  threes = exp.generate(params, [80.0], 8, seed=1, labels=np.asarray([3]))
  fives = exp.generate(params, [80.0], 8, seed=1, labels=np.asarray([5]))
  assert not np.array_equal(threes, fives)  # the labels reach the network
  # Given labels equal to the drawn ones reproduce the drawn samples.
  drawn = exp.resolve_labels("random", 8, seed=1)
  np.testing.assert_array_equal(exp.generate(params, [80.0], 8, seed=1, labels=drawn),
                                by_size[8])
  exp_u, _ = unconditional
  assert exp_u.resolve_labels("random", 4, seed=0) is None
  with pytest.raises(ValueError, match="unconditional"):
    exp_u.resolve_labels(np.asarray([1]), 4, seed=0)

