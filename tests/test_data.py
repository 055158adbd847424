"""The offline digits dataset and the input pipeline: determinism, sharding, resume, epochs."""
import os
import re
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cm_jax import data
from cm_jax.data import digits
from cm_jax.data import pipeline
from cm_jax.data import sources

N_TRAIN, N_TEST = 1497, 300


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare_digits(path)
  return path


def make_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      name="digits", resolution=16, channels=1, num_classes=10, data_dir=data_dir,
      random_flip=False, num_workers=0))
  config.update(overrides)
  return config


def take(stream, n: int) -> list[dict[str, np.ndarray]]:
  return [next(stream) for _ in range(n)]


def test_builds_offline_as_array_record_without_tensorflow(data_dir):
  data.prepare_digits(data_dir)  # a second call is a no-op
  version_dir = os.path.join(data_dir, "digits", "1.0.0")
  files = sorted(os.listdir(version_dir))
  assert "dataset_info.json" in files
  assert any(f.startswith("digits-train.array_record") for f in files), files
  data.load_split(make_config(data_dir), "test", max_examples=4)
  assert "tensorflow" not in sys.modules


def test_split_sizes_labels_and_pixels(data_dir):
  config = make_config(data_dir)
  assert data.dataset_size(config, "train") == N_TRAIN
  assert data.dataset_size(config, "test") == N_TEST
  test = data.load_split(config, "test")
  assert test["image"].shape == (N_TEST, 16, 16, 1) and test["image"].dtype == np.float32
  assert test["label"].dtype == np.int32
  assert test["image"].min() == -1.0 and test["image"].max() == 1.0
  np.testing.assert_array_equal(np.bincount(test["label"]), [30] * 10)  # stratified
  train = data.load_split(config, "train", max_examples=100)
  assert train["image"].shape == (100, 16, 16, 1)
  assert 0 <= train["label"].min() and train["label"].max() <= 9


def test_native_resolution_round_trips_scikit_learn_pixels(data_dir):
  from sklearn.datasets import load_digits
  raw = load_digits()
  idx = digits.test_indices(raw.target)
  expected = {(np.rint(raw.images[i] * 255 / 16).astype(np.uint8).tobytes(), raw.target[i])
              for i in idx}
  test = data.load_split(make_config(data_dir, resolution=8), "test")
  pixels = np.rint((test["image"][..., 0] + 1) * 127.5).astype(np.uint8)
  assert {(p.tobytes(), l) for p, l in zip(pixels, test["label"])} == expected


@pytest.mark.parametrize("size_in,size_out", [(8, 16), (32, 16), (7, 5)])
def test_resize_matches_pil_bilinear(size_in, size_out):
  img = np.random.default_rng(0).integers(0, 256, (1, size_in, size_in, 1), np.uint8)
  ours = pipeline.to_model_input(img, size_out)[0, ..., 0]
  as_float = img[0, ..., 0].astype(np.float32) * (2 / 255) - 1
  pil = np.asarray(Image.fromarray(as_float, mode="F").resize((size_out, size_out),
                                                               Image.BILINEAR))
  np.testing.assert_allclose(ours, pil, atol=1e-5)


def test_train_batches_are_deterministic_per_seed(data_dir):
  config = make_config(data_dir)
  kw = dict(global_batch_size=32, process_index=0, process_count=1)
  a = take(data.train_batches(config, seed=0, **kw), 3)
  b = take(data.train_batches(config, seed=0, **kw), 3)
  c = take(data.train_batches(config, seed=1, **kw), 3)
  assert a[0]["image"].shape == (32, 16, 16, 1) and a[0]["image"].dtype == np.float32
  assert a[0]["label"].shape == (32,) and a[0]["label"].dtype == np.int32
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  threaded = take(data.train_batches(make_config(data_dir, num_workers=2), seed=0, **kw), 3)
  for x, y in zip(a, threaded):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_batches_are_records_of_the_split(data_dir):
  config = make_config(data_dir)
  train = data.load_split(config, "train")
  batch = next(data.train_batches(config, global_batch_size=16, seed=3, start_step=7,
                                  process_index=0, process_count=1))
  idx = pipeline.batch_indices(N_TRAIN, 16, 3, 7)
  np.testing.assert_array_equal(batch["image"], train["image"][idx])
  np.testing.assert_array_equal(batch["label"], train["label"][idx])


def test_flips_are_per_row_and_deterministic(data_dir):
  config = make_config(data_dir, random_flip=True)
  train = data.load_split(config, "train")
  batch = next(data.train_batches(config, global_batch_size=64, seed=5, start_step=2,
                                  process_index=0, process_count=1))
  flip = pipeline.flip_mask(5, 2, np.arange(64))
  assert 0 < flip.sum() < 64
  expected = train["image"][pipeline.batch_indices(N_TRAIN, 64, 5, 2)]
  expected[flip] = expected[flip, :, ::-1]
  np.testing.assert_array_equal(batch["image"], expected)


def test_global_batch_is_independent_of_process_count(data_dir):
  config = make_config(data_dir, random_flip=True)
  kw = dict(global_batch_size=24, seed=11)
  whole = take(data.train_batches(config, process_index=0, process_count=1, **kw), 3)
  parts = [take(data.train_batches(config, process_index=p, process_count=2, **kw), 3)
           for p in range(2)]
  for k in range(3):
    assert parts[0][k]["image"].shape == (12, 16, 16, 1)
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])
    rows = [pipeline.batch_indices(N_TRAIN, 24, 11, k, np.arange(p * 12, (p + 1) * 12))
            for p in range(2)]
    assert not set(rows[0]) & set(rows[1])  # each process reads its own records


@pytest.mark.parametrize("process_count", [1, 2])
def test_start_step_resumes_exactly(data_dir, process_count):
  config = make_config(data_dir, random_flip=True)
  kw = dict(global_batch_size=16, seed=2, process_index=process_count - 1,
            process_count=process_count)
  fresh = take(data.train_batches(config, **kw), 6)
  resumed = take(data.train_batches(config, start_step=4, **kw), 2)
  for x, y in zip(fresh[4:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_epochs_cover_every_example_once_and_reshuffle():
  n, batch = 10, 4  # batches straddle epoch boundaries
  stream = np.concatenate([pipeline.batch_indices(n, batch, 0, k) for k in range(15)])  # 6 epochs
  epochs = stream.reshape(6, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert len({e.tobytes() for e in epochs}) == 6
  other_seed = np.concatenate([pipeline.batch_indices(n, batch, 1, k) for k in range(3)])
  assert not np.array_equal(other_seed[:n], epochs[0])


def test_unknown_dataset_names_the_known_ones(data_dir):
  with pytest.raises(ValueError, match=r"Unknown dataset 'mnist_typo'.*digits"):
    data.dataset_size(make_config(data_dir, name="mnist_typo"), "train")


def test_indivisible_batch_says_what_to_change(data_dir):
  with pytest.raises(ValueError, match=r"10 must be a positive multiple of the process count 3.*"
                                       r"train\.batch_size"):
    data.train_batches(make_config(data_dir), global_batch_size=10, seed=0, process_index=0,
                       process_count=3)


def test_config_must_match_the_data(data_dir):
  with pytest.raises(ValueError, match=r"data\.channels=3 .* 1-channel"):
    data.load_split(make_config(data_dir, channels=3), "test")
  with pytest.raises(ValueError, match=r"data\.num_classes=1000 .* 10 classes"):
    data.load_split(make_config(data_dir, num_classes=1000), "test")
  with pytest.raises(ValueError, match=r"no split 'validation'"):
    data.load_split(make_config(data_dir), "validation")


def test_unprepared_tfds_dataset_names_the_build_command(tmp_path, monkeypatch):
  monkeypatch.setitem(sources._TFDS, "cifar10", sources.TfdsDataset("cifar10"))
  config = make_config(str(tmp_path), name="cifar10", channels=3)
  expected = re.escape(f"tfds build cifar10 --data_dir={tmp_path} --file_format=array_record")
  with pytest.raises(FileNotFoundError, match=expected):
    data.load_split(config, "test")


def test_data_dir_resolution(monkeypatch):
  assert data.resolve_data_dir("/some/dir") == "/some/dir"
  monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
  assert data.resolve_data_dir("") == "/from/env"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert data.resolve_data_dir("") == os.path.expanduser("~/tensorflow_datasets")
