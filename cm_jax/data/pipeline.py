"""Training and evaluation input: a grain MapDataset of whole local batches over a `Source`.

Training cuts global batches from an endless stream of epochs, each a permutation of the split
keyed by (seed, epoch), so global batch k depends on (seed, k) alone. Each process computes and
reads only its own rows of every global batch; item k of the MapDataset is batch k, so resuming
from a checkpoint needs nothing but the step. The permutation is a cached numpy argsort of hashed
keys rather than grain's `shuffle().repeat().batch()`: that spends Python time on every index
(docs/datasets.md, "Order, flips, processes"), and grain folds the epoch into the seed
additively, so seed s epoch 1 would replay seed s+1 epoch 0.
"""
from collections.abc import Iterator
import functools

import grain
import ml_collections
import numpy as np

from cm_jax.data import sources
from cm_jax.errors import UserError

_LOAD_CHUNK = 1024  # records per read in `load_split`
_ENDLESS = 2**62  # the stop of the training stream's step range


def _hash(*values: int) -> np.uint64:
  """A splitmix64 chain over integers: fixed across numpy versions, unlike Generator streams."""
  return _mix(np.uint64(0), [np.uint64(int(v) % 2**64) for v in values])[()]


def _mix(h: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
  """Folds each of `values` (uint64 scalars or arrays, broadcast) into the hash state `h`."""
  with np.errstate(over="ignore"):
    for v in values:
      x = (np.asarray(h, np.uint64) ^ v) + np.uint64(0x9E3779B97F4A7C15)
      x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
      x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
      h = x ^ (x >> np.uint64(31))
  return np.asarray(h, np.uint64)


@functools.lru_cache(maxsize=32)
def _resize_weights(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] antialiased bilinear (triangle filter) weights, as PIL's BILINEAR."""
  scale = size_in / size_out
  support = max(scale, 1.0)  # widen the triangle when shrinking: that is the antialiasing
  centers = (np.arange(size_out) + 0.5) * scale - 0.5  # output pixel centres in input coords
  w = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] - centers[:, None]) / support)
  return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)  # rows renormalised at the edges


def to_model_input(images: np.ndarray, resolution: int) -> np.ndarray:
  """uint8 [B, H, W, C] -> float32 [B, R, R, C] in [-1, 1], resized antialiased-bilinearly."""
  x = images.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
  _, h, w, _ = x.shape
  if (h, w) != (resolution, resolution):
    x = _resize_weights(h, resolution) @ x.transpose(0, 3, 1, 2) @ _resize_weights(w, resolution).T
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))  # [B, C, R, R] -> [B, R, R, C]
    np.clip(x, -1.0, 1.0, out=x)  # the weights are convex: this only clips float32 rounding
  return x


def flip_mask(seed: int, step: int, rows: np.ndarray) -> np.ndarray:
  """bool [len(rows)]: which global rows of global batch `step` are flipped left-right."""
  h = _mix(_hash(seed, 0x5EED_F11B, step), [np.asarray(rows).astype(np.uint64)])
  return (h >> np.uint64(63)).astype(bool)


@functools.lru_cache(maxsize=8)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of range(num_examples) that epoch `epoch` visits, as int64 [N]."""
  keys = _mix(_hash(seed, 0x5EED_5AFF, epoch), [np.arange(num_examples, dtype=np.uint64)])
  return np.argsort(keys, kind="stable")


def batch_indices(num_examples: int, global_batch_size: int, seed: int, step: int,
                  rows: np.ndarray | None = None) -> np.ndarray:
  """Record indices int64 [len(rows)] of rows `rows` (default: all) of global batch `step`.

  The batches cut one endless stream of epochs, each a fresh permutation of range(num_examples)
  keyed by (seed, epoch); batches run across epoch boundaries, so no example is ever dropped.
  Only this process's rows are computed, but from the same per-epoch permutation everywhere.
  """
  rows = np.arange(global_batch_size) if rows is None else np.asarray(rows)
  epochs, offsets = np.divmod(step * global_batch_size + rows, num_examples)
  out = np.empty(len(rows), np.int64)
  for epoch in np.unique(epochs):
    here = epochs == epoch
    out[here] = _epoch_order(num_examples, seed, int(epoch))[offsets[here]]
  return out


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  # only when the caller leaves it to JAX
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  return process_index, process_count


def _open_checked(data_config: ml_collections.ConfigDict, split: str) -> sources.Source:
  """Opens the split and checks that the config describes the data it holds."""
  source = sources.open_source(data_config, split)
  name = data_config.name
  if data_config.channels != source.channels:
    raise UserError(f"data.channels={data_config.channels} but {name!r} has {source.channels}-"
                    f"channel images: set --config.data.channels={source.channels}.")
  if data_config.num_classes and data_config.num_classes != source.num_classes:
    raise UserError(f"data.num_classes={data_config.num_classes} but {name!r} has "
                    f"{source.num_classes} classes (0 = unlabelled): set "
                    f"--config.data.num_classes={source.num_classes} (or 0 to ignore labels).")
  if data_config.resolution <= 0:
    raise UserError(f"data.resolution must be positive, got {data_config.resolution}.")
  native = source.resolution
  if native and data_config.resolution > native and not source.allow_upsample:
    raise UserError(f"data.resolution={data_config.resolution} but {name!r} holds {native}x"
                    f"{native} images, and upsampling them would only blur: set "
                    f"--config.data.resolution={native} (or smaller, to train downsampled).")
  return source


def train_batches(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless stream of this process's part of each global batch of the `train` split.

  Yields {'image': float32 [B_local, R, R, C] in [-1, 1], 'label': int32 [B_local]} with
  B_local = global_batch_size // process_count. Global batch k is a function of (seed, k) alone,
  whatever the process count; process p gets its rows [p*B_local, (p+1)*B_local) and reads only
  those records. `start_step=k` resumes exactly at global batch k. Process index and count
  default to JAX's.
  """
  process_index, process_count = _process_layout(process_index, process_count)
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(
        f"The global batch size {global_batch_size} must be a positive multiple of the process "
        f"count {process_count}: change train.batch_size (or the number of processes).")
  if start_step < 0:
    raise UserError(f"start_step must be >= 0, got {start_step}.")
  source = _open_checked(data_config, "train")
  local = global_batch_size // process_count
  rows = np.arange(process_index * local, (process_index + 1) * local)  # global row numbers
  resolution, random_flip = data_config.resolution, data_config.random_flip

  def load(step: int) -> dict[str, np.ndarray]:
    images, labels = source.read(batch_indices(len(source), global_batch_size, seed, step, rows))
    x = to_model_input(images, resolution)
    if random_flip:
      flip = flip_mask(seed, step, rows)
      x[flip] = x[flip, :, ::-1]
    return {"image": x, "label": labels}

  # Item k of this MapDataset is local batch k, so resuming is indexing: no iterator state.
  ds = grain.MapDataset.range(start_step, _ENDLESS).map(load)
  workers = data_config.num_workers
  # Each element is a whole local batch, so threads read and preprocess batches in parallel.
  options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
  return iter(ds.to_iter_dataset(options))


def load_split(data_config: ml_collections.ConfigDict, split: str,
               max_examples: int | None = None) -> dict[str, np.ndarray]:
  """The whole split (or its first `max_examples`) in memory in the stored order, not flipped.

  Returns {'image': float32 [N, R, R, C] in [-1, 1], 'label': int32 [N]}: for evaluation and tests.
  """
  source = _open_checked(data_config, split)
  n = len(source) if max_examples is None else min(max_examples, len(source))
  images, labels = [], []
  for start in range(0, n, _LOAD_CHUNK):
    chunk_images, chunk_labels = source.read(range(start, min(start + _LOAD_CHUNK, n)))
    images.append(to_model_input(chunk_images, data_config.resolution))
    labels.append(chunk_labels)
  r, c = data_config.resolution, data_config.channels
  return {"image": np.concatenate(images) if images else np.zeros((0, r, r, c), np.float32),
          "label": np.concatenate(labels) if labels else np.zeros((0,), np.int32)}


def check_config(data_config: ml_collections.ConfigDict) -> None:
  """Fails early, with what to change, on a dataset that cannot serve this config."""
  _open_checked(data_config, "train")


def dataset_size(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples in `split` (prepares offline datasets if needed)."""
  return len(sources.open_source(data_config, split))
