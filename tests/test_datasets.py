"""Real-dataset input: the TFDS catalogue sources (on fake array_record stand-ins), LSUN's centre
crop, image folders, flips and per-process rows, and the errors that say what to do."""
import os
import re
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cm_jax import data
from cm_jax.data import fake
from cm_jax.data import pipeline
from cm_jax.data import sources

N_FAKE = 24
# name -> (stored resolution, classes)
CATALOGUE = {"cifar10": (32, 10), "imagenet_resized/64x64": (64, 1000),
             "lsun/bedroom": (256, 0), "lsun/cat": (256, 0)}


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("fake_tfds"))
  for name in CATALOGUE:
    fake.prepare_fake(name, path, num_examples=N_FAKE)
  return path


def config(name: str, data_dir: str = "", **overrides) -> ml_collections.ConfigDict:
  resolution, classes = CATALOGUE.get(name, (16, 0))
  c = ml_collections.ConfigDict(dict(name=name, resolution=resolution, channels=3,
                                     num_classes=classes, data_dir=data_dir, random_flip=False,
                                     num_workers=0))
  c.update(overrides)
  return c


def first_batch(c, batch=8, seed=0, step=0, process_index=0, process_count=1):
  return next(data.train_batches(c, global_batch_size=batch, seed=seed, start_step=step,
                                 process_index=process_index, process_count=process_count))


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_catalogue_dataset_reads_through_array_record(fake_dir, name):
  resolution, classes = CATALOGUE[name]
  c = config(name, fake_dir)
  assert data.dataset_size(c, "train") == N_FAKE
  batch = first_batch(c)
  assert batch["image"].shape == (8, resolution, resolution, 3)
  assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
  assert -1 <= batch["image"].min() < 0 < batch["image"].max() <= 1
  if classes:
    assert 0 <= batch["label"].min() and batch["label"].max() < classes
    assert len(set(batch["label"].tolist())) > 1
  else:
    assert not batch["label"].any()
  # Smaller than stored: downsampled on reading (LSUN: cropped straight to that size).
  small = first_batch(config(name, fake_dir, resolution=16))
  assert small["image"].shape == (8, 16, 16, 3)
  assert "tensorflow" not in sys.modules


def test_fake_refuses_to_overwrite(fake_dir):
  with pytest.raises(FileExistsError, match="not writing fake data"):
    fake.prepare_fake("cifar10", fake_dir)


def test_lsun_centre_crop_as_the_release():
  # Short side equal to the target: a pure centre crop, pixel for pixel.
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, (40, 70, 3), np.uint8)
  np.testing.assert_array_equal(sources.center_crop_resize(Image.fromarray(wide), 40),
                                wide[:, 15:55])
  tall = rng.integers(0, 256, (71, 40, 3), np.uint8)
  np.testing.assert_array_equal(sources.center_crop_resize(Image.fromarray(tall), 40),
                                tall[15:55])
  # A big image is box-halved first, then resized bicubically: a flat image stays flat.
  flat = np.full((1100, 700, 3), 77, np.uint8)
  out = sources.center_crop_resize(Image.fromarray(flat), 256)
  assert out.shape == (256, 256, 3) and (out == 77).all()
  grey = sources.center_crop_resize(Image.fromarray(flat[..., 0]), 20)
  assert grey.shape == (20, 20, 1)


def test_resolution_and_channel_mismatches_say_what_to_set(fake_dir):
  with pytest.raises(ValueError, match=r"data\.resolution=64 but 'cifar10' holds 32x32 .*"
                                       r"--config\.data\.resolution=32"):
    data.check_config(config("cifar10", fake_dir, resolution=64))
  with pytest.raises(ValueError, match=r"data\.resolution=512 .* 256x256"):
    data.check_config(config("lsun/cat", fake_dir, resolution=512))
  with pytest.raises(ValueError, match=r"data\.channels=1 .* 3-channel .*channels=3"):
    data.check_config(config("imagenet_resized/64x64", fake_dir, channels=1))
  with pytest.raises(ValueError, match=r"num_classes=10 but 'lsun/bedroom' has 0 classes"):
    data.check_config(config("lsun/bedroom", fake_dir, num_classes=10))
  with pytest.raises(ValueError, match=r"no split 'test'.*'train'"):
    data.load_split(config("lsun/cat", fake_dir), "test")


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_unprepared_catalogue_dataset_names_the_build_command(tmp_path, name):
  expected = re.escape(f"tfds build {name} --data_dir={tmp_path} --file_format=array_record")
  with pytest.raises(FileNotFoundError, match=expected) as error:
    data.check_config(config(name, str(tmp_path)))
  assert ".[tf]" in str(error.value) and "docs/datasets.md" in str(error.value)


def test_flips_are_deterministic_per_row(fake_dir):
  plain = first_batch(config("cifar10", fake_dir), batch=16, seed=3, step=5)
  flipped = first_batch(config("cifar10", fake_dir, random_flip=True), batch=16, seed=3, step=5)
  again = first_batch(config("cifar10", fake_dir, random_flip=True), batch=16, seed=3, step=5)
  np.testing.assert_array_equal(flipped["image"], again["image"])
  mask = pipeline.flip_mask(3, 5, np.arange(16))
  assert 0 < mask.sum() < 16
  np.testing.assert_array_equal(flipped["image"][mask], plain["image"][mask][:, :, ::-1])
  np.testing.assert_array_equal(flipped["image"][~mask], plain["image"][~mask])
  np.testing.assert_array_equal(flipped["label"], plain["label"])
  other_step = pipeline.flip_mask(3, 6, np.arange(16))
  assert not np.array_equal(mask, other_step)


@pytest.mark.parametrize("name,process_count", [("cifar10", 2), ("lsun/bedroom", 4)])
def test_process_rows_are_disjoint_and_make_the_global_batch(fake_dir, name, process_count):
  c = config(name, fake_dir, random_flip=True, resolution=16)
  whole = first_batch(c, batch=16, seed=7, step=2)
  parts = [first_batch(c, batch=16, seed=7, step=2, process_index=p, process_count=process_count)
           for p in range(process_count)]
  local = 16 // process_count
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
  rows = [set(pipeline.batch_indices(N_FAKE, 16, 7, 2, np.arange(p * local, (p + 1) * local)))
          for p in range(process_count)]
  for i in range(process_count):
    for j in range(i + 1, process_count):
      assert not rows[i] & rows[j]


# --- image folders -------------------------------------------------------------------------------

def write_image(path, size, mode="RGB", value=None, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  w, h = size
  rng = np.random.default_rng(seed)
  channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
  pixels = (rng.integers(0, 256, (h, w, channels), np.uint8) if value is None
            else np.full((h, w, channels), value, np.uint8))
  Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(path)


@pytest.fixture
def folder(tmp_path) -> str:
  root = tmp_path / "images"
  write_image(str(root / "cats" / "a.png"), (30, 20), value=10)
  write_image(str(root / "cats" / "deep" / "b.JPG"), (17, 40), mode="L", value=200)
  write_image(str(root / "dogs" / "c.png"), (16, 16), mode="RGBA", seed=1)
  write_image(str(root / "dogs" / "d.jpeg"), (50, 33), seed=2)
  write_image(str(root / "dogs" / "e.webp"), (24, 24), seed=3)
  (root / "dogs" / "notes.txt").write_text("not an image")
  write_image(str(root / ".hidden" / "f.png"), (8, 8))
  return str(root)


def test_image_folder_labels_from_subfolders(folder):
  c = config(f"image_folder:{folder}", num_classes=2, resolution=16)
  source = sources.open_source(c, "train")
  assert source.files == sorted([os.path.join("cats", "a.png"),
                                 os.path.join("cats", "deep", "b.JPG"),
                                 os.path.join("dogs", "c.png"), os.path.join("dogs", "d.jpeg"),
                                 os.path.join("dogs", "e.webp")])
  assert source.class_names == ["cats", "dogs"]
  split = data.load_split(c, "train")
  assert split["image"].shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(split["label"], [0, 0, 1, 1, 1])
  # Flat images stay flat through crop and resize; greyscale files become RGB.
  np.testing.assert_allclose(split["image"][0], 10 * 2 / 255 - 1, atol=1e-6)
  np.testing.assert_allclose(split["image"][1], 200 * 2 / 255 - 1, atol=1e-6)
  batch = first_batch(config(f"image_folder:{folder}", num_classes=2, resolution=16,
                             random_flip=True), batch=4, seed=1)
  assert batch["image"].shape == (4, 16, 16, 3)


def test_image_folder_unlabelled_and_greyscale(folder):
  c = config(f"image_folder:{folder}", num_classes=0, channels=1, resolution=8)
  split = data.load_split(c, "train")
  assert split["image"].shape == (5, 8, 8, 1)
  assert not split["label"].any()


def test_image_folder_errors_say_what_to_do(folder, tmp_path):
  empty = tmp_path / "empty"
  (empty / "sub").mkdir(parents=True)
  (empty / "sub" / "readme.txt").write_text("x")
  with pytest.raises(ValueError, match=r"no image files .* under .*empty"):
    data.check_config(config(f"image_folder:{empty}"))
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    data.check_config(config(f"image_folder:{tmp_path / 'missing'}"))
  with pytest.raises(ValueError, match="needs a path"):
    data.check_config(config("image_folder:"))
  with pytest.raises(ValueError, match=r"num_classes=3 but .* has 2 classes"):
    data.check_config(config(f"image_folder:{folder}", num_classes=3))
  with pytest.raises(ValueError, match=r"channels must be 1 .* or 3"):
    data.check_config(config(f"image_folder:{folder}", channels=4))
  write_image(os.path.join(folder, "loose.png"), (8, 8))
  with pytest.raises(ValueError, match=r"top-level subfolder.*loose\.png.*num_classes=0"):
    data.check_config(config(f"image_folder:{folder}", num_classes=2))
  with pytest.raises(ValueError, match=r"one split, 'train'"):
    data.load_split(config(f"image_folder:{folder}"), "test")
  bad = os.path.join(folder, "dogs", "zz_broken.png")
  with open(bad, "wb") as f:
    f.write(b"not a png at all")
  c = config(f"image_folder:{folder}", num_classes=0)
  with pytest.raises(ValueError, match=r"Cannot read image .*zz_broken\.png.*Remove or replace"):
    data.load_split(c, "train")


def test_known_names_and_unknown_dataset():
  names = data.known_names()
  for name in [*CATALOGUE, "digits", "image_folder:PATH"]:
    assert name in names
  with pytest.raises(ValueError, match=r"Unknown dataset 'lsun/dog'.*lsun/bedroom.*image_folder"):
    data.check_config(config("lsun/dog"))


def test_digits_build_command_builds_the_splits(tmp_path):
  """`python -m cm_jax.data.digits --out=DIR`, the command the gs:// data_dir error gives."""
  import subprocess
  from tests import REPO_ROOT, subprocess_env
  run = lambda *a: subprocess.run([sys.executable, "-m", "cm_jax.data.digits", *a], cwd=REPO_ROOT,
                                  env=subprocess_env(), capture_output=True, text=True, timeout=300)
  out = run(f"--out={tmp_path / 'tfds'}")
  assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
  config = ml_collections.ConfigDict(dict(name="digits", data_dir=str(tmp_path / "tfds"),
                                          resolution=16, channels=1, num_classes=10))
  assert data.dataset_size(config, "train") == 1497 and data.dataset_size(config, "test") == 300
  out = run(str(tmp_path / "tfds"))   # the old positional form: --out is required
  assert out.returncode == 2 and "--out must have a value" in out.stderr
