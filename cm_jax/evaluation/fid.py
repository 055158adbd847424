"""FID, Inception Score and (optionally) improved precision/recall, streamed (docs/maths.md §9).

Images arrive batch by batch (from a sampler, a sample file or a dataset split); a feature network
(the FID Inception, or the digit classifier on the digits default) runs on device, sharded over
every device; only float64 running moments (mean, centred second moment) and per-split Inception
Score sums stay on the host, so 50k samples never sit in memory together. The statistics can be
saved and restored mid-stream, which is what lets an interrupted evaluation resume.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import jax
import numpy as np

from cm_jax import files as file_io
from cm_jax import parallel, progress, storage
from cm_jax.errors import MissingPath, UserError
from cm_jax.evaluation import inception
from cm_jax.evaluation.frechet import RunningStats, frechet_distance  # noqa: F401 (re-export)

IS_SPLITS = 10


# ----------------------------------------------------------------------------- feature networks

class FeatureNet:
  """uint8 images [B, H, W, C] -> (features float64 [B, D], logits float64 [B, K]).

  `name` identifies the feature space in results and reference caches; `channels` is what the
  network takes (images of another channel count are an error).
  """
  name: str
  dim: int
  channels: int
  num_logits: int

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError


class InceptionNet(FeatureNet):
  """The FID Inception, sharded over the mesh's data axis. Every call runs a fixed-size batch
  (padded, trimmed), so the network compiles once per input resolution."""
  name, dim, channels, num_logits = "inception", inception.POOL3_DIM, 3, inception.NUM_LOGITS

  def __init__(self, params, mesh=None, batch_size: int = 64):
    self.mesh = mesh or parallel.create_mesh()
    self.batch_size = parallel.round_up(batch_size, self.mesh.devices.size)
    self.params = parallel.to_global_tree(params, parallel.replicated(self.mesh))
    net = lambda p, x: inception.InceptionV3().apply({"params": p}, inception.preprocess(x))
    self._net = parallel.over_rows(net, self.mesh)

  def __call__(self, images):
    images = check_images(images, self.channels)
    if not len(images):
      return np.zeros((0, self.dim)), np.zeros((0, inception.NUM_LOGITS))
    return parallel.map_in_batches(lambda chunk: self._net(self.params, chunk),
                                   [images], self.batch_size,
                                   to_host=lambda a: np.asarray(jax.device_get(a), np.float64))


def load_inception_net(weights: Optional[str], batch_size: int = 64) -> InceptionNet:
  """The FID Inception from a converted directory; a clear error when none is given."""
  if not weights:
    raise UserError("Inception features need converted weights: --inception_weights=DIR, made "
                    f"once by `{inception.CONVERT_COMMAND}` from pytorch-fid's weight file. "
                    "(For the digits default use --features=digits.)")
  return InceptionNet(inception.load(weights), batch_size=batch_size)


class DigitNet(FeatureNet):
  """The project's digit classifier (penultimate 64-d features, 10 logits): Inception means
  nothing for 16x16 digits (cm_jax/evaluation/digit_features.py)."""
  name, channels = "digits", 1

  def __init__(self, net):
    self.net = net
    self.dim = net.module.feature_dim
    self.num_logits = net.num_classes

  def __call__(self, images):
    images = check_images(images, self.channels)
    logits, features = self.net._run(images, 256)
    return features, logits


def check_images(images, channels: int) -> np.ndarray:
  """uint8 [N, H, W, C] with C = channels, or a clear error."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise UserError(f"images must be uint8 in [0, 255] (the .npz sample layout), got "
                    f"{images.dtype}; convert floats in [-1, 1] with (x + 1) * 127.5, rounded.")
  if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[-1] != channels:
    raise UserError(f"images must be [N, H, W, {channels}] (square, {channels} channel"
                    f"{'s' if channels > 1 else ''} for this feature network), got "
                    f"{images.shape}.")
  return images


# ----------------------------------------------------------------------------- statistics

def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclasses.dataclass
class InceptionScore:
  """Streaming Inception Score over `splits` contiguous splits of `total` images in stream order,
  as ADM's evaluator and improved-GAN split them (split k = images [k n, (k+1) n), n = total //
  splits; a remainder is left out). Per split, in float64: the count, the sum of p(y|x) and the
  sum of sum_y p log p, from which exp(E_x KL(p(y|x) || p(y))) follows exactly."""
  total: int
  num_classes: int
  splits: int = IS_SPLITS
  seen: int = 0

  def __post_init__(self):
    self.count = np.zeros(self.splits, np.float64)
    self.sum_p = np.zeros((self.splits, self.num_classes), np.float64)
    self.sum_plogp = np.zeros(self.splits, np.float64)

  @property
  def split_size(self) -> int:
    return self.total // self.splits

  def update(self, logits: np.ndarray) -> None:
    logp = _log_softmax(np.asarray(logits, np.float64))
    p = np.exp(logp)
    idx = np.arange(self.seen, self.seen + len(p))
    self.seen += len(p)
    if self.split_size == 0:
      return
    split = idx // self.split_size
    keep = split < self.splits
    np.add.at(self.count, split[keep], 1.0)
    np.add.at(self.sum_p, split[keep], p[keep])
    np.add.at(self.sum_plogp, split[keep], np.sum(p[keep] * logp[keep], axis=-1))

  def scores(self) -> np.ndarray:
    if self.split_size == 0 or np.any(self.count == 0):
      raise UserError(f"Inception Score needs at least {self.splits} images, got {self.seen}.")
    mean_p = self.sum_p / self.count[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
      ent = np.where(mean_p > 0, mean_p * np.log(mean_p), 0.0).sum(-1)
    return np.exp(self.sum_plogp / self.count - ent)

  def result(self) -> tuple[float, float]:
    s = self.scores()
    return float(np.mean(s)), float(np.std(s))


class FeatureStats:
  """Running FID moments + Inception Score (+ the features themselves, for precision/recall)."""

  def __init__(self, dim: int, num_classes: int, total: int, keep_features: bool = False):
    self.moments = RunningStats(dim)
    self.inception_score = InceptionScore(total, num_classes)
    self.features = [] if keep_features else None

  @property
  def count(self) -> int:
    return self.moments.count

  def update(self, features: np.ndarray, logits: np.ndarray) -> None:
    self.moments.update(features)
    self.inception_score.update(logits)
    if self.features is not None:
      self.features.append(np.asarray(features, np.float32))

  def state(self) -> dict:
    """Arrays that restore this object exactly (for resuming)."""
    out = {"count": np.int64(self.moments.count), "seen": np.int64(self.inception_score.seen),
           "is_count": self.inception_score.count, "is_sum_p": self.inception_score.sum_p,
           "is_sum_plogp": self.inception_score.sum_plogp}
    if self.moments.count:
      out["mean"], out["m2"] = self.moments._mean, self.moments._m2
    if self.features is not None and self.features:
      out["features"] = np.concatenate(self.features)
    return out

  def restore(self, state) -> None:
    n = int(state["count"])
    self.moments.count = n
    if n:
      self.moments._mean = np.asarray(state["mean"], np.float64)
      self.moments._m2 = np.asarray(state["m2"], np.float64)
    s = self.inception_score
    s.seen = int(state["seen"])
    s.count, s.sum_p, s.sum_plogp = (np.asarray(state["is_count"]), np.asarray(state["is_sum_p"]),
                                     np.asarray(state["is_sum_plogp"]))
    if self.features is not None and "features" in state:
      self.features = [np.asarray(state["features"])]

  def all_features(self) -> np.ndarray:
    return np.concatenate(self.features) if self.features else np.zeros((0, self.moments.dim))


def stream_stats(net: FeatureNet, batches: Iterable[np.ndarray], total: int,
                 keep_features: bool = False, desc: str = "features") -> FeatureStats:
  """Feature statistics of uint8 image batches (a progress bar named `desc` over `total`)."""
  stats = FeatureStats(net.dim, net.num_logits, total, keep_features)
  with progress.bar(total, f"{desc} ({net.name})") as bar:
    for images in batches:
      stats.update(*net(images))
      bar.update(len(images))
  return stats


# ----------------------------------------------------------------------------- references

@dataclasses.dataclass
class Reference:
  """Statistics to compare against: mu [D], sigma [D, D]; features [M, D] when known (a sample
  file or a dataset split), for precision/recall."""
  mu: np.ndarray
  sigma: np.ndarray
  source: str
  features: Optional[np.ndarray] = None


def iterate_batches(images, batch_size: int) -> Iterable[np.ndarray]:
  """Batches of an array, or of a `SampleFile` (read from disk batch by batch)."""
  if isinstance(images, SampleFile):
    yield from images.batches(batch_size)
    return
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


class SampleFile:
  """arr_0 of an .npz sample file, uint8 [N, H, W, C], read in batches straight from the archive
  (np.savez or savez_compressed), so a 50k x 256 x 256 file never sits in memory whole."""

  def __init__(self, path: str):
    import zipfile
    if not storage.isfile(path):
      raise MissingPath(f"{path} does not exist.")
    self.path = path
    try:
      with storage.open_read(path) as raw, zipfile.ZipFile(raw) as z:
        names = z.namelist()
        if "arr_0.npy" not in names:
          raise UserError(f"{path} has no arr_0: sample files hold arr_0 = uint8 [N, H, W, C] "
                          "(what `python -m cm_jax.sample` and ADM's sampler write).")
        with z.open("arr_0.npy") as f:
          self.shape, self.dtype, self._fortran = self._header(f)
    except zipfile.BadZipFile as e:
      raise UserError(f"{path} is not a readable .npz file ({e}).") from None
    if (self.dtype != np.uint8 or len(self.shape) != 4 or self.shape[1] != self.shape[2]
        or self._fortran):
      raise UserError(f"{path}: arr_0 must be uint8 [N, H, W, C] with H = W, got "
                      f"{self.dtype} {self.shape}. Save samples as uint8 in [0, 255].")

  @staticmethod
  def _header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
      shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), np.dtype(dtype), fortran

  def __len__(self) -> int:
    return self.shape[0]

  def batches(self, batch_size: int) -> Iterable[np.ndarray]:
    import zipfile
    item = int(np.prod(self.shape[1:]))
    with storage.open_read(self.path) as raw, zipfile.ZipFile(raw) as z, \
        z.open("arr_0.npy") as f:
      self._header(f)
      for start in range(0, len(self), batch_size):
        n = min(batch_size, len(self) - start)
        buf = f.read(n * item)
        if len(buf) != n * item:
          raise UserError(f"{self.path}: arr_0 is truncated at image {start}.")
        yield np.frombuffer(buf, np.uint8).reshape((n,) + self.shape[1:])

  def head(self, n: int) -> np.ndarray:
    return next(iter(self.batches(n)))


def load_sample_file(path: str, channels: Optional[int] = None) -> SampleFile:
  """arr_0 of an .npz sample file (uint8 [N, H, W, C]), checked, to be read in batches."""
  images = SampleFile(path)
  if channels is not None and images.shape[-1] != channels:
    raise UserError(f"{path}: arr_0 has {images.shape[-1]} channels, the feature network takes "
                    f"{channels} (use --features=digits for 1-channel digits, inception for RGB).")
  return images


def load_reference(path: str, net: FeatureNet, batch_size: int = 256,
                   keep_features: bool = False) -> Reference:
  """An .npz of precomputed statistics (`mu`, `sigma`, as pytorch-fid and ADM's reference batches
  store them) or of reference images (`arr_0`, statistics computed here)."""
  with file_io.open_npz(path, "Reference") as data:
    keys = set(data.files)
    if {"mu", "sigma"} <= keys and not (keep_features and "arr_0" in keys):
      mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
      if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{path}: mu must be [D] and sigma [D, D], got {mu.shape} and "
                        f"{sigma.shape}.")
      if mu.shape[0] != net.dim:
        raise UserError(f"{path} holds {mu.shape[0]}-d statistics, but the {net.name} features "
                        f"are {net.dim}-d: use reference statistics of the same feature network "
                        f"(--features={'inception' if mu.shape[0] == 2048 else 'digits'}?).")
      return Reference(mu, sigma, path)
    if "arr_0" not in keys:
      raise UserError(f"{path} holds neither mu/sigma nor arr_0 (keys: {sorted(keys)}): give "
                      "reference statistics or a reference sample file.")
  return reference_from_images(load_sample_file(path, net.channels), net, path, batch_size,
                               keep_features)


def reference_from_images(images, net: FeatureNet, source: str, batch_size: int = 256,
                          keep_features: bool = False) -> Reference:
  stats = stream_stats(net, iterate_batches(images, batch_size), len(images), keep_features)
  return Reference(stats.moments.mean(), stats.moments.cov(), source,
                   stats.all_features() if keep_features else None)


def reference_from_dataset(data_config, split: str, net: FeatureNet, cache_dir: Optional[str],
                           batch_size: int = 256, keep_features: bool = False) -> Reference:
  """Statistics of a dataset split (e.g. CIFAR-10 train, what the CM release compares against),
  streamed in batches; cached as mu/sigma in cache_dir (keyed by dataset, resolution, split and
  feature network)."""
  from cm_jax import sampling
  from cm_jax.data import pipeline, sources
  name = (f"reference_{data_config.name}_r{data_config.resolution}_{split}_{net.name}.npz")
  path = storage.join(cache_dir, name) if cache_dir else None
  if path and storage.isfile(path) and not keep_features:
    with file_io.open_npz(path, "the cached reference statistics") as d:
      if d["mu"].shape == (net.dim,):
        return Reference(d["mu"], d["sigma"], f"{data_config.name}:{split}")
  source = sources.open_source(data_config, split)
  n = len(source)

  def batches():
    for start in range(0, n, batch_size):
      raw, _ = source.read(range(start, min(start + batch_size, n)))
      yield sampling.to_uint8(pipeline.to_model_input(raw, data_config.resolution))

  stats = stream_stats(net, batches(), n, keep_features, desc=f"{data_config.name}:{split}")
  ref = Reference(stats.moments.mean(), stats.moments.cov(), f"{data_config.name}:{split}",
                  stats.all_features() if keep_features else None)
  if path and jax.process_index() == 0:
    file_io.write_npz_atomically(path, mu=ref.mu, sigma=ref.sigma)
  return ref


# ----------------------------------------------------------------------------- precision / recall

def _pairwise_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  aa, bb = np.sum(a * a, 1)[:, None], np.sum(b * b, 1)[None, :]
  return np.maximum(aa + bb - 2.0 * a @ b.T, 0.0)


def _radii(feats: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
  """Squared distance of each point to its k-th nearest neighbour in its own set (not itself)."""
  out = np.empty(len(feats))
  for s in range(0, len(feats), chunk):
    d = _pairwise_sq(feats[s:s + chunk], feats)
    out[s:s + chunk] = np.partition(d, k, axis=1)[:, k]  # column 0 of the sort is the point itself
  return out


def _coverage(query: np.ndarray, support: np.ndarray, radii: np.ndarray,
              chunk: int = 1024) -> float:
  """Fraction of query points inside some support point's k-NN ball."""
  inside = 0
  for s in range(0, len(query), chunk):
    d = _pairwise_sq(query[s:s + chunk], support)
    inside += int(np.sum(np.any(d <= radii[None, :], axis=1)))
  return inside / max(1, len(query))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls, k = 3 as ADM's
  evaluator: precision = fake inside the real manifold, recall = real inside the fake one."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  if len(real) <= k or len(fake) <= k:
    raise UserError(f"precision/recall needs more than k={k} real and generated features.")
  return (_coverage(fake, real, _radii(real, k)), _coverage(real, fake, _radii(fake, k)))
