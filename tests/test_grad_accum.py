"""train.grad_accum = K: the step over K micro-batches equals the unsplit step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cm_jax import parallel
from cm_jax.errors import UserError
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step, micro_batches
from configs import digits
from tests.helpers.per_example_noise import ID_KEY, PerExampleNoise

# Execution-bound (training loops run many steps): compiled with XLA's optimisations.
pytestmark = pytest.mark.optimized


def _batch(n: int, classes: int = 10) -> dict:
  rng = np.random.default_rng(0)
  return {"image": rng.uniform(-1, 1, (n, 16, 16, 1)).astype(np.float32),
          "label": rng.integers(0, classes, n).astype(np.int32),
          ID_KEY: np.arange(n, dtype=np.int32)}


@pytest.fixture
def quick_compiles():
  """Unoptimised XLA programs: the same arithmetic, compiled in half the time."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def _small_config(method: str):
  config = digits.get_config(f"method={method},runlocal")
  config.model.update(dict(channels=8, channel_mult=(1,), attn_resolutions=(), dropout=0.1))
  return config


def _train_steps(config, grad_accum: int, steps: int = 2):
  mesh = parallel.create_mesh(jax.devices()[:1])
  exp = Experiment.from_config(config, mesh)
  state = exp.init_state(0)
  initial = jax.device_get(state.params)
  frozen = jax.tree.map(jnp.copy, state.ema_params) if exp.method.uses_teacher else None
  step = make_train_step(PerExampleNoise(exp.method), exp.tx, float(config.ema_rate), mesh,
                         grad_accum=grad_accum)
  batch = parallel.global_batch(_batch(8), mesh)
  metrics = []
  for _ in range(steps):
    state, m = step(state, batch, frozen)
    metrics.append(jax.device_get(m))
  return state, metrics, initial


@pytest.mark.parametrize("method", ["ict", pytest.param("cd", marks=pytest.mark.slow)])
def test_split_step_equals_unsplit(method, quick_compiles):
  """A real network and loss (dropout on), two steps of the optimizer: params, EMA, target and
  the logged loss and gradient norm of K = 4 micro-batches equal one batch of 8."""
  config = _small_config(method)
  whole, m_whole, initial = _train_steps(config, 1)
  split, m_split, _ = _train_steps(config, 4)
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose([m[key] for m in m_split], [m[key] for m in m_whole], rtol=2e-5)
  for name in ("params", "ema_params", "target_params"):
    a, b = getattr(whole, name), getattr(split, name)
    if a is None:
      assert b is None
      continue
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=2e-6, rtol=1e-5)
  assert int(split.step) == 2
  # Not vacuous: the two steps moved the parameters.
  moved = max(float(np.max(np.abs(np.asarray(x) - y)))
              for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(initial)))
  assert moved > 1e-5


def test_micro_batches_interleave_rows():
  mesh = parallel.create_mesh(jax.devices()[:1])
  x = jnp.arange(12.0).reshape(6, 2)
  m = micro_batches({"x": x}, 3, mesh)["x"]
  assert m.shape == (3, 2, 2)
  np.testing.assert_array_equal(np.asarray(m[1]), np.asarray(x[1::3]))


def test_micro_batch_count_must_divide_the_batch_per_device():
  mesh = parallel.create_mesh(jax.devices()[:1])
  with pytest.raises(UserError, match="grad_accum"):
    parallel.check_batch_size(12, mesh, grad_accum=0)
  with pytest.raises(UserError, match=r"multiple of 8 \(devices x grad_accum\)"):
    parallel.check_batch_size(12, mesh, grad_accum=8)
  parallel.check_batch_size(16, mesh, grad_accum=8)
