"""A small digit classifier whose penultimate layer is the feature space of the digits "FID".

Inception-v3 features mean nothing for 16x16 digits, so the digits default measures sample
quality as a Frechet distance in the features of a CNN trained here on the real digits (the same
idea as FID, with a network that knows digits). It trains in seconds on CPU and is cached.

Images are [N, R, R, 1]: float in [-1, 1] or uint8 in [0, 255] (mapped by x / 127.5 - 1, the
inverse of how samples are saved), R divisible by 4 (two 2x pools).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cm_jax import files, parallel
from cm_jax.errors import UserError
from cm_jax.evaluation.frechet import frechet_distance, stats_from_features

DEFAULT_STEPS = 600
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 3e-3
DEFAULT_MAX_SHIFT = 2  # pixels at R = 16, i.e. one pixel of the original 8x8 digits
FEATURE_DIM = 64
_CACHE_VERSION = 1  # bump when the network or its training changes, to invalidate caches


class DigitCNN(nn.Module):
  """Three 3x3 conv stages (two 2x max-pools), then Dense(feature_dim) -> ReLU -> Dense(classes).

  The features are the Dense(feature_dim) output *before* the ReLU: after it, units that are dead
  for every input would give all-zero covariance rows and a singular Frechet problem.
  """
  num_classes: int = 10
  feature_dim: int = FEATURE_DIM
  widths: tuple[int, int, int] = (16, 32, 64)

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # x: [B, R, R, 1] -> logits [B, num_classes], features [B, feature_dim]
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i < 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)  # [B, R/4 * R/4 * widths[-1]]
    features = nn.Dense(self.feature_dim)(x)
    logits = nn.Dense(self.num_classes)(nn.relu(features))
    return logits, features


def to_model_input(images: np.ndarray, resolution: int | None = None) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] images, [N, R, R] or [N, R, R, 1] -> float32 [N, R, R, 1]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] != 1 or images.shape[1] != images.shape[2]:
    raise UserError(f'expected digit images [N, R, R, 1], got shape {images.shape}')
  if resolution is not None and images.shape[1] != resolution:
    raise UserError(f'expected {resolution}x{resolution} images, got {images.shape[1]}x'
                    f'{images.shape[2]}')
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  images = images.astype(np.float32)
  if images.size and np.abs(images).max() > 1.5:
    raise UserError(f'float images must be in [-1, 1], got values up to {np.abs(images).max():.3g};'
                    ' pass uint8 for [0, 255] data')
  return images


class DigitFeatureNet:
  """Trained DigitCNN parameters plus a jitted forward pass, with NumPy in and out."""

  def __init__(self, params: Any, resolution: int, num_classes: int = 10):
    self.params = params
    self.resolution = resolution
    self.num_classes = num_classes
    self.module = DigitCNN(num_classes=num_classes)
    # Every device of every process computes its share of each batch.
    self._mesh = parallel.create_mesh()
    self._params_on_mesh = parallel.to_global_tree(params, parallel.replicated(self._mesh))
    self._apply = parallel.over_rows(lambda p, x: self.module.apply({'params': p}, x), self._mesh)

  def _run(self, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, K], features [N, D]) over every device (of every process); the last batch is
    padded so nothing retraces."""
    x = to_model_input(images, self.resolution)
    if not x.shape[0]:
      return np.zeros((0, self.num_classes)), np.zeros((0, self.module.feature_dim))
    size = parallel.device_batch_size(batch_size, len(x), self._mesh)
    logits, feats = parallel.map_in_batches(lambda chunk: self._apply(self._params_on_mesh, chunk),
                                            [x], size)
    return logits.astype(np.float64), feats.astype(np.float64)

  def features(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features [N, D], float64."""
    return self._run(images, batch_size)[1]

  def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities [N, K], float64."""
    return _softmax(self._run(images, batch_size)[0])

  def predict(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted labels [N], int64."""
    return np.argmax(self._run(images, batch_size)[0], axis=-1)

  def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images classified as their label."""
    return float(np.mean(self.predict(images) == np.asarray(labels)))


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
  """Shifts each image [B, R, R, 1] by up to max_shift pixels per axis, filling with background."""
  if max_shift == 0:
    return images
  b, r = images.shape[:2]
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  windows = np.lib.stride_tricks.sliding_window_view(padded, (r, r), axis=(1, 2))
  offsets = rng.integers(0, 2 * m + 1, size=(2, b))  # windows: [B, 2m+1, 2m+1, 1, R, R]
  return np.moveaxis(windows[np.arange(b), offsets[0], offsets[1]], 1, -1)


def _param_shapes(module: DigitCNN, resolution: int) -> Any:
  """The parameter tree as ShapeDtypeStructs (traced, never run)."""
  dummy = jax.ShapeDtypeStruct((1, resolution, resolution, 1), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x)['params'], dummy)


def _init_params(module: DigitCNN, resolution: int, rng: np.random.Generator) -> Any:
  """LeCun-normal kernels and zero biases, drawn with NumPy.

  Flax's own init compiles a threefry kernel per layer, which costs more on CPU than the
  training itself; the distribution is the same up to truncation, and the cache makes it a
  one-off anyway.
  """
  template = _param_shapes(module, resolution)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, template)


@functools.lru_cache(maxsize=None)
def _train_step(num_classes: int, feature_dim: int, steps: int, lr: float):
  """(optimizer, jitted step) for one configuration, built once per process.

  Batches are sampled and shifted in NumPy and fed to a Python loop over the jitted step: no
  PRNG inside XLA (its threefry kernels compile slowly on CPU), and no lax.scan, inside which
  XLA:CPU runs these convolutions many times slower (README, "Evaluation").
  """
  module = DigitCNN(num_classes=num_classes, feature_dim=feature_dim)
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, min(50, steps // 10)), steps)
  opt = optax.adamw(schedule, weight_decay=1e-4)

  def loss_fn(params, x, y):
    logits, _ = module.apply({'params': params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return opt, step


def train_digit_classifier(train_images: np.ndarray, train_labels: np.ndarray, *, seed: int = 0,
                           steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                           lr: float = DEFAULT_LR, max_shift: int = DEFAULT_MAX_SHIFT,
                           num_classes: int = 10) -> DigitFeatureNet:
  """Trains the feature CNN with AdamW and small random shifts; deterministic given seed.

  The shifts make the features tolerate the small misplacements of generated digits, so a
  well-drawn but off-centre digit is not scored as out of distribution.
  """
  x = to_model_input(train_images)
  y = np.asarray(train_labels, dtype=np.int32)
  if x.shape[1] % 4:
    raise UserError(f'resolution must be divisible by 4, got {x.shape[1]}')
  if y.shape != (x.shape[0],):
    raise UserError(f'expected {x.shape[0]} labels, got shape {y.shape}')
  rng = np.random.default_rng(seed)
  module = DigitCNN(num_classes=num_classes)
  opt, step = _train_step(num_classes, module.feature_dim, steps, lr)
  params = jax.device_put(_init_params(module, x.shape[1], rng))
  opt_state = opt.init(params)
  for _ in range(steps):
    idx = rng.integers(0, x.shape[0], size=batch_size)
    params, opt_state, _ = step(params, opt_state, _random_shift(x[idx], rng, max_shift), y[idx])
  params = jax.tree_util.tree_map(np.asarray, params)
  return DigitFeatureNet(params, x.shape[1], num_classes)


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha1()
  h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
  h.update(np.ascontiguousarray(labels, dtype=np.int32).tobytes())
  return h.hexdigest()[:10]


def _restore_params(path: str, resolution: int, num_classes: int) -> Any:
  """Reads cached params, checking them against the network's structure and shapes."""
  template = _param_shapes(DigitCNN(num_classes=num_classes), resolution)
  with open(path, 'rb') as f:
    params = flax.serialization.from_bytes(template, f.read())
  for (kp, want), got in zip(jax.tree_util.tree_leaves_with_path(template),
                             jax.tree_util.tree_leaves(params)):
    if np.shape(got) != want.shape:
      raise UserError(f'{jax.tree_util.keystr(kp)}: shape {np.shape(got)} != {want.shape}')
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def default_cache_dir() -> str:
  """Where the trained classifier is cached: $XDG_CACHE_HOME/cm_jax, else ~/.cache/cm_jax."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "cm_jax")


def load_or_train(cache_dir: str, train_images: np.ndarray, train_labels: np.ndarray, *,
                  seed: int = 0, steps: int = DEFAULT_STEPS,
                  num_classes: int = 10) -> DigitFeatureNet:
  """Loads the classifier from cache_dir, or trains and caches it.

  The cache file is keyed by resolution, seed, steps and a hash of the training data, so a
  different split never reuses stale features. An unreadable or mismatched file is retrained
  (with a warning) and overwritten; writes are atomic so a killed run cannot leave half a file.
  """
  x = to_model_input(train_images)
  y = np.asarray(train_labels, dtype=np.int32)
  name = (f'digit_features_v{_CACHE_VERSION}_r{x.shape[1]}_seed{seed}_steps{steps}_'
          f'{_fingerprint(x, y)}.msgpack')
  path = os.path.join(cache_dir, name)
  # The processes of one machine that start together train the network once.
  with files.exclusive(path + '.lock'):
    if os.path.exists(path):
      try:
        return DigitFeatureNet(_restore_params(path, x.shape[1], num_classes), x.shape[1],
                               num_classes)
      except Exception as e:  # any corruption: retrain rather than fail an evaluation
        warnings.warn(f'digit feature cache {path} is unreadable ({type(e).__name__}: {e}); '
                      'retraining', RuntimeWarning, stacklevel=2)
    net = train_digit_classifier(x, y, seed=seed, steps=steps, num_classes=num_classes)
    try:
      files.write_atomically(path, flax.serialization.to_bytes(net.params))
    except OSError as e:  # an unwritable cache costs a retrain next time, not this evaluation
      warnings.warn(f'could not cache digit features at {path}: {e}', RuntimeWarning,
                    stacklevel=2)
    return net


DARK_LEVEL = 0.1  # a pixel below 10% of the way from black to white counts as background


def dark_fraction(images: np.ndarray) -> float:
  """Fraction of pixels near black: the training digits have a third of them, a generator with
  grey backgrounds far fewer."""
  x = to_model_input(images)
  return float(np.mean((x + 1.0) / 2.0 < DARK_LEVEL))


def quality_report(net: DigitFeatureNet, samples: np.ndarray, reference_images: np.ndarray,
                   heldout_images: np.ndarray, num_classes: int = 10,
                   min_class_fraction: float = 0.02) -> dict[str, Any]:
  """Digit-feature Frechet distance of samples, beside the same figure for held-out real digits.

  frechet: all samples vs reference_images (the training split); 1000 samples or more keep the
    small-count bias of the Frechet distance below the differences that matter.
  frechet_real: heldout_images (real test digits) vs the same reference: the floor a generator
    of new digits should be judged against (one that memorises the training split can go lower,
    since the network was trained on it).
  frechet_at_heldout_count: the first len(heldout_images) samples only, the figure to set beside
    frechet_real (the Frechet distance is biased upward by small counts, so only equal counts
    compare).
  Also: class_histogram (predicted classes of the samples), classes_covered (classes with at
  least min_class_fraction of the samples), mean_confidence (mean max softmax probability; lower
  for blobs and ambiguous shapes than for real digits), dark_fraction (pixels near black: low for
  grey backgrounds), and the same three for the held-out images.
  """
  n_samples, n_heldout = len(samples), len(heldout_images)
  if n_samples < n_heldout:
    raise UserError(f'quality_report needs at least as many samples as held-out images '
                    f'({n_heldout}), got {n_samples}')
  mu_ref, sigma_ref = stats_from_features(net.features(reference_images))

  def describe(images):
    logits, feats = net._run(images, 256)
    probs = _softmax(logits)
    hist = np.bincount(probs.argmax(-1), minlength=num_classes)[:num_classes]
    fd = lambda f: frechet_distance(*stats_from_features(f), mu_ref, sigma_ref)
    return {
        'frechet': fd(feats),
        'frechet_at_heldout_count': fd(feats[:n_heldout]),
        'class_histogram': [int(c) for c in hist],
        'classes_covered': int(np.sum(hist >= min_class_fraction * len(images))),
        'mean_confidence': float(probs.max(-1).mean()),
        'dark_fraction': dark_fraction(images),
    }

  fake, real = describe(samples), describe(heldout_images)
  return {
      'frechet': fake['frechet'],
      'frechet_at_heldout_count': fake['frechet_at_heldout_count'],
      'frechet_real': real['frechet'],
      'num_samples': n_samples,
      'num_heldout': n_heldout,
      'num_reference': len(reference_images),
      'class_histogram': fake['class_histogram'],
      'classes_covered': fake['classes_covered'],
      'mean_confidence': fake['mean_confidence'],
      'dark_fraction': fake['dark_fraction'],
      'classes_covered_real': real['classes_covered'],
      'mean_confidence_real': real['mean_confidence'],
      'dark_fraction_real': real['dark_fraction'],
  }
