"""CT and iCT curricula and the iCT pair distribution against hand-computed values
(docs/maths.md §3, §5)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from cm_jax import karras
from cm_jax.methods import ct, ict

LEVELS = karras.NoiseLevels()


def test_ct_num_levels_hand_computed():
  K, s0, s1 = 800_000, 2, 150
  assert int(ct.ct_num_levels(0, K, s0, s1)) == 2
  assert int(ct.ct_num_levels(K, K, s0, s1)) == 151
  # k = K/2: sqrt(0.5 * (151^2 - 4) + 4) = 106.78 -> ceil(105.78) + 1 = 107
  assert int(ct.ct_num_levels(K // 2, K, s0, s1)) == 107


def test_ct_num_levels_float32_matches_float64_everywhere():
  K, s0, s1 = 800_000, 2, 150
  ks = np.arange(0, K + 1, 997)
  ref = ct.ct_num_levels(ks, K, s0, s1, xp=np)
  got = np.asarray(jax.jit(lambda k: ct.ct_num_levels(k, K, s0, s1))(jnp.asarray(ks)))
  assert np.array_equal(got, ref)
  assert np.all(np.diff(ref) >= 0)


def test_ct_target_decay_paper_and_release():
  # At k = 0, N = s0 = 2: paper exp(2 ln 0.9 / 2) = 0.9, release divides by N - 1: 0.81.
  assert float(ct.ct_target_decay(2, 2, 0.9, "paper")) == pytest.approx(0.9, rel=1e-6)
  assert float(ct.ct_target_decay(2, 2, 0.9, "release")) == pytest.approx(0.81, rel=1e-6)
  assert float(ct.ct_target_decay(151, 2, 0.9, "paper")) == pytest.approx(0.9 ** (2 / 151), rel=1e-6)
  assert float(ct.ct_target_decay(151, 2, 0.0, "paper")) == 0.0
  with pytest.raises(ValueError, match="ema_schedule"):
    ct.ct_target_decay(2, 2, 0.9, "other")


def test_ict_curriculum_hand_computed():
  K = 400_000
  period = ict.ict_doubling_period(K, 10, 1280)
  assert period == 50_000  # floor(400000 / (log2(128) + 1))
  expected = {0: 11, 49_999: 11, 50_000: 21, 100_000: 41, 150_000: 81, 300_000: 641,
              350_000: 1281, 399_999: 1281, 10**7: 1281}
  for k, n in expected.items():
    assert int(ict.ict_num_levels(k, K, 10, 1280)) == n, k
    assert int(ict.ict_num_levels(k, K, 10, 1280, xp=np)) == n, k


def test_ict_pair_distribution_hand_computed():
  n_levels, pm, ps = 11, -1.1, 2.0
  sig = karras.karras_sigmas(n_levels, LEVELS)
  cdf = lambda s: erf((np.log(s) - pm) / (np.sqrt(2) * ps))
  p = cdf(sig[1:]) - cdf(sig[:-1])
  p /= p.sum()
  logits = ict.lognormal_pair_logits(jnp.int32(n_levels), 21, LEVELS, pm, ps)
  got = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(got[:10], p, rtol=1e-4)
  assert np.all(got[10:] == 0)  # pairs beyond N(k) are never drawn
  # Empirical frequencies of the sampler follow p.
  config_draws = jax.random.categorical(jax.random.PRNGKey(0), logits, shape=(200_000,)) + 1
  freq = np.bincount(np.asarray(config_draws), minlength=11)[1:] / 200_000
  np.testing.assert_allclose(freq, p, atol=4e-3)


def test_inverse_gap_weight():
  assert float(ict.inverse_gap_weight(jnp.float32(1.0), jnp.float32(1.5))) == pytest.approx(2.0)


def test_cd_takes_the_weighting_of_its_config():
  from cm_jax.errors import UserError
  from cm_jax.methods import cd, consistency
  from configs import digits
  config = digits.get_config("method=cd,runlocal")
  net = lambda *a: None
  config.distill.weighting = "uniform"  # CM's CD
  assert cd.create(config, net, (16, 16, 1)).weight is consistency.unit_weight
  config.distill.weighting = "inverse_gap"
  assert cd.create(config, net, (16, 16, 1)).weight is consistency.inverse_gap_weight
  config.distill.weighting = "snr"
  with pytest.raises(UserError, match="distill.weighting must be one of uniform, inverse_gap"):
    cd.create(config, net, (16, 16, 1))


def _optim(**kw):
  from configs import base
  oc = base.get_base_config().optim
  oc.update(dict(learning_rate=1e-3, **kw))
  return oc


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_learning_rate_schedules_hand_computed(decay):
  from cm_jax.train import state
  sched = state.learning_rate_schedule(_optim(decay=decay, warmup_steps=10,
                                              final_lr_fraction=0.1), 110)
  assert float(sched(0)) == 0.0
  assert math.isclose(float(sched(5)), 5e-4, rel_tol=1e-6)
  assert math.isclose(float(sched(10)), 1e-3, rel_tol=1e-6)
  # Half-way through the decay: cosine and linear both sit at (1 + 0.1) / 2 of the peak.
  assert math.isclose(float(sched(60)), 0.55e-3, rel_tol=1e-5)
  assert math.isclose(float(sched(110)), 1e-4, rel_tol=1e-5)
  quarter = 1e-4 + 0.9e-3 * ((1 + math.cos(math.pi / 4)) / 2 if decay == "cosine" else 0.75)
  assert math.isclose(float(sched(35)), quarter, rel_tol=1e-5)


def test_constant_schedule_and_bad_decay():
  from cm_jax.train import state
  assert state.learning_rate_schedule(_optim(), 100) == 1e-3
  with pytest.raises(ValueError, match="optim.decay"):
    state.learning_rate_schedule(_optim(decay="step"), 100)
  with pytest.raises(ValueError, match="final_lr_fraction"):
    state.learning_rate_schedule(_optim(decay="cosine", final_lr_fraction=2.0), 100)
  with pytest.raises(ValueError, match="warmup_steps"):
    state.learning_rate_schedule(_optim(decay="linear", warmup_steps=100), 100)
