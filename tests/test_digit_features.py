"""The digit feature network: accuracy, caching, and that its Frechet distance ranks quality."""

import os
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from cm_jax.evaluation import digit_features as df

# Execution-bound (training loops run many steps): compiled with XLA's optimisations.
pytestmark = pytest.mark.optimized

TEST_STEPS = 150  # ~98% held-out accuracy in ~2 s; the default trains longer
NUM_HELDOUT = 300


def _digits(resolution: int = 16):
  """sklearn digits in [-1, 1], bilinearly upscaled, split into train / 300 held-out."""
  d = load_digits()
  x = d.images[..., None].astype(np.float32) / 16.0 * 2.0 - 1.0  # [N, 8, 8, 1]
  if resolution != 8:
    x = np.asarray(jax.image.resize(jnp.asarray(x), (x.shape[0], resolution, resolution, 1),
                                    'bilinear'))
  perm = np.random.default_rng(0).permutation(len(x))
  test, train = perm[:NUM_HELDOUT], perm[NUM_HELDOUT:]
  return x[train], d.target[train], x[test], d.target[test]


def cached_files(cache_dir):
  return [n for n in os.listdir(cache_dir) if n.endswith('.msgpack')]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  x_train, y_train, x_test, y_test = _digits()
  cache_dir = str(tmp_path_factory.mktemp('digit_cache'))
  net = df.load_or_train(cache_dir, x_train, y_train, seed=0, steps=TEST_STEPS)
  return net, cache_dir, (x_train, y_train, x_test, y_test)


def test_heldout_accuracy(trained):
  net, _, (_, _, x_test, y_test) = trained
  assert net.accuracy(x_test, y_test) > 0.9  # chance is 0.1
  assert net.features(x_test[:5]).shape == (5, df.FEATURE_DIM)
  assert net.features(x_test[:5]).dtype == np.float64


def test_cache_round_trip_loads_without_training(trained, monkeypatch):
  net, cache_dir, (x_train, y_train, x_test, _) = trained
  [name] = cached_files(cache_dir)
  assert 'r16_seed0' in name

  def refuse(*args, **kwargs):
    raise AssertionError('should have loaded from the cache')

  monkeypatch.setattr(df, 'train_digit_classifier', refuse)
  reloaded = df.load_or_train(cache_dir, x_train, y_train, seed=0, steps=TEST_STEPS)
  np.testing.assert_array_equal(reloaded.features(x_test), net.features(x_test))


def test_corrupt_cache_is_retrained_with_warning(trained, tmp_path):
  net, cache_dir, (x_train, y_train, x_test, _) = trained
  [name] = cached_files(cache_dir)
  shutil.copy(os.path.join(cache_dir, name), tmp_path / name)
  (tmp_path / name).write_bytes(b'\x00 not msgpack')
  with pytest.warns(RuntimeWarning, match='unreadable'):
    retrained = df.load_or_train(str(tmp_path), x_train, y_train, seed=0, steps=TEST_STEPS)
  # Same seed, same data: the retrained network matches, and the cache is whole again.
  np.testing.assert_allclose(retrained.features(x_test), net.features(x_test), rtol=1e-4,
                             atol=1e-4)
  reloaded = df.load_or_train(str(tmp_path), x_train, y_train, seed=0, steps=TEST_STEPS)
  np.testing.assert_array_equal(reloaded.features(x_test), retrained.features(x_test))


def test_processes_filling_one_cache_train_once(trained, tmp_path, monkeypatch):
  """Two callers at once (as the processes of a multi-process evaluation, or test workers): the
  second waits on the cache's lock and loads what the first trained."""
  net, _, (x_train, y_train, _, _) = trained
  calls = []

  def slow_training(*args, **kwargs):
    calls.append(1)
    time.sleep(0.5)   # the other caller arrives while this one trains
    return net

  monkeypatch.setattr(df, 'train_digit_classifier', slow_training)
  nets = []
  threads = [threading.Thread(target=lambda: nets.append(
      df.load_or_train(str(tmp_path), x_train, y_train, seed=0, steps=TEST_STEPS)))
             for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(calls) == 1 and len(nets) == 2
  assert len(cached_files(tmp_path)) == 1


def test_quality_report_ranks_real_digits_above_noise(trained):
  net, _, (x_train, _, x_test, _) = trained
  real = df.quality_report(net, x_test, x_train, x_test)
  assert real['frechet'] == pytest.approx(real['frechet_real'])
  assert real['num_samples'] == real['num_heldout'] == NUM_HELDOUT
  assert real['classes_covered'] == 10
  assert sum(real['class_histogram']) == NUM_HELDOUT
  assert real['mean_confidence'] > 0.9

  noise = np.random.default_rng(1).uniform(-1, 1, size=x_test.shape).astype(np.float32)
  fake = df.quality_report(net, noise, x_train, x_test)
  assert fake['frechet'] > 10 * fake['frechet_real']
  assert fake['classes_covered'] < real['classes_covered']


def test_quality_report_ranks_grey_and_faint_digits_as_bad(trained):
  """What a person sees in weak one-step samples (grey backgrounds, soft low-contrast strokes)
  must cost a large part of the figure, and show in dark_fraction."""
  net, _, (x_train, _, x_test, _) = trained
  pool = np.concatenate([x_test, x_train[:700]])  # 1000 real digits, 300 of them held out
  real = df.quality_report(net, pool, x_train, x_test)
  grey = df.quality_report(net, np.clip(0.75 * pool + 0.2, -1, 1), x_train, x_test)
  soft = 0.5 * pool + 0.5 * np.roll(pool, 1, axis=1)
  soft = 0.5 * soft + 0.5 * np.roll(soft, 1, axis=2)
  blurred = df.quality_report(net, soft, x_train, x_test)
  assert real['num_samples'] == 1000 and real['num_heldout'] == NUM_HELDOUT
  assert real['dark_fraction'] == pytest.approx(real['dark_fraction_real'], abs=0.05)
  assert grey['dark_fraction'] < 0.5 * real['dark_fraction']
  for bad in (grey, blurred):
    assert bad['frechet'] > 4 * real['frechet']
    assert bad['frechet_at_heldout_count'] > 2 * bad['frechet_real']
  with pytest.raises(ValueError, match='at least as many samples'):
    df.quality_report(net, x_test[:10], x_train, x_test)


def test_uint8_samples_match_float(trained):
  net, _, (x_train, _, x_test, _) = trained
  as_uint8 = np.round((x_test + 1.0) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(df.to_model_input(as_uint8), x_test, atol=0.5 / 127.5 + 1e-6)
  report = df.quality_report(net, as_uint8, x_train, x_test)
  assert report['frechet'] == pytest.approx(report['frechet_real'], rel=0.05)


def test_input_validation(trained):
  net, _, _ = trained
  with pytest.raises(ValueError, match='16x16'):
    net.features(np.zeros((2, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    net.features(np.full((2, 16, 16, 1), 255.0, np.float32))
  with pytest.raises(ValueError, match='divisible by 4'):
    df.train_digit_classifier(np.zeros((4, 10, 10, 1)), np.zeros(4), steps=1)


def test_other_resolutions_train():
  x_train, y_train, x_test, _ = _digits(resolution=8)  # the native 8x8 digits
  net = df.train_digit_classifier(x_train, y_train, steps=5)
  assert net.features(x_test[:3]).shape == (3, df.FEATURE_DIM)
  assert net.predict(x_test[:3]).shape == (3,)
