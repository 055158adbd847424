"""A regression guard on the default recipe (iCT on digits): its run must learn digits.

Not a timing test: the default run itself (2000 steps, a few minutes) in-process, its figure
compared with a fixed threshold far below what the previous default reached. A shorter run does
not serve: the curriculum squeezed into 1000 steps scored 59.8, worse than the old default.
"""
import jax
import pytest

from cm_jax import data
from cm_jax.train import loop, report
from configs import digits

# On this figure (1000 one-step samples) the unconditional recipe scored 21.2 and the one before
# it 36.9; today's default 7.1-7.3 at one step on two machines (README). The margin allows for
# other CPUs' arithmetic, which moves a run about as much as another seed. Two steps are held to
# the same bar, not below one step: on one machine they scored 5.4, on another 7.7 (one step 7.2).
ONE_STEP_THRESHOLD = 10.0


@pytest.mark.slow
@pytest.mark.optimized  # 2000 training steps: the run users get
def test_default_run_loss_falls_and_one_step_samples_are_digits(tmp_path):
  config = digits.get_config("method=ict")
  steps = int(config.train.num_steps)
  config.train.update(dict(save_every=steps, sample_every=steps, num_grid_samples=0))
  config.eval.report_at_end = False
  summary = loop.train_and_evaluate(config, str(tmp_path / "w"))
  exp, state = summary["experiment"], summary["state"]

  # The training loss of the final curriculum stage, on one fixed batch and key: the trained
  # weights against the initial ones (the logged loss mixes stages whose weights differ).
  batch = {k: jax.numpy.asarray(v[:256]) for k, v in data.load_split(config.data, "train").items()}
  loss_at = lambda params: float(exp.method.loss(params, None, batch, jax.random.PRNGKey(3),
                                                 steps - 1)[0])
  initial = exp.init_state(int(config.seed)).params
  before, after = loss_at(initial), loss_at(state.ema_params)
  assert after < 0.7 * before, (before, after)

  scores, _ = report.score_digits(exp, state.ema_params, 1000)
  one = scores["1-step"]
  assert one["num_samples"] == 1000
  assert one["frechet"] < ONE_STEP_THRESHOLD, one
  assert one["classes_covered"] == 10
  assert scores["2-step"]["frechet"] < ONE_STEP_THRESHOLD, scores["2-step"]
