"""Where records come from: the dataset registry and random access to one split of a dataset.

The pipeline needs only a `Source`: its length, its channel and class counts, its native
resolution, and `read(indices)` returning uint8 images and int labels. A TFDS dataset becomes one
through `tfds.data_source`-style array_record access (no TensorFlow). Adding a TFDS dataset is one
`TfdsDataset` line in `_TFDS`; a dataset named with a prefix and an argument (`image_folder:PATH`)
gets an opener in `_PREFIXED`. Catalogue datasets read without TF too: `tfds.features.Image`
decodes PNG/JPEG with OpenCV or PIL.

Variable-size images (LSUN, image folders) are centre-cropped to a square and resized as the ADM /
CM PyTorch releases prepare LSUN: halve with a box filter while the short side is at least twice
the target, resize the short side to the target with a bicubic filter, cut the centre square.
"""
from collections.abc import Callable, Sequence
import dataclasses
import os
from typing import Protocol

import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from cm_jax import images, storage
from cm_jax.data import digits
from cm_jax.errors import MissingPath, UserError

class Source(Protocol):
  """Random access to one split."""
  channels: int
  num_classes: int  # 0 = unlabelled
  resolution: int | None  # side of the stored square images; None: any (image folders)
  allow_upsample: bool  # whether data.resolution may exceed `resolution`

  def __len__(self) -> int:
    ...

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, H, W, C] and int32 labels [n] (zeros if unlabelled), in `indices` order."""
    ...


def resolve_data_dir(data_dir: str) -> str:
  """The TFDS data dir a config means: '' is $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  storage.check(data_dir, "data.data_dir")
  return data_dir if storage.is_remote(data_dir) else os.path.expanduser(data_dir)


def tfds_build_hint(name: str, data_dir: str) -> str:
  """The message for a known TFDS dataset that is not prepared in `data_dir`."""
  return (
      f"TFDS dataset {name!r} is not prepared in {data_dir}. Build it once (it downloads, and "
      f"`tfds build` needs TensorFlow installed: pip install -e '.[tf]'), then rerun:\n"
      f"  tfds build {name} --data_dir={data_dir} --file_format=array_record\n"
      f"(docs/datasets.md has the details for each dataset.)")


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
  """uint8 [size, size, C]: ADM's centre crop of a PIL image of any size (see the module doc)."""
  while min(image.size) >= 2 * size:  # cheap, alias-free halving first
    image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
  scale = size / min(image.size)
  image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)),
                       resample=Image.BICUBIC)
  arr = np.asarray(image)
  top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
  arr = arr[top:top + size, left:left + size]
  return arr[..., None] if arr.ndim == 2 else arr


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  # Checking the directory first skips tfds's warning about a missing one.
  return builder.data_path.exists() and builder.is_prepared()


class _TfdsSource:
  """A split of a prepared TFDS dataset, read record by record from its array_record files."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, dataset: "TfdsDataset",
               resolution: int):
    self._records = builder.as_data_source(split=split)
    self._image_key, self._label_key = dataset.image_key, dataset.label_key
    features = builder.info.features
    shape = features[self._image_key].shape  # (H, W, C); H, W None for variable-size images
    self.channels = int(shape[-1])
    label = features[self._label_key] if self._label_key else None
    self.num_classes = int(label.num_classes) if isinstance(label, tfds.features.ClassLabel) else 0
    self.allow_upsample = dataset.allow_upsample
    # Variable-size images are cropped to data.resolution (at most crop_size) as they are read.
    self._crop = None
    if shape[0] is None or shape[1] is None:
      self.resolution = dataset.crop_size
      self._crop = min(resolution, dataset.crop_size)
    else:
      self.resolution = int(shape[0]) if shape[0] == shape[1] else None

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    records = self._records.__getitems__([int(i) for i in indices])  # one batched file read
    if self._crop:
      images = np.stack([center_crop_resize(Image.fromarray(np.asarray(r[self._image_key])),
                                            self._crop) for r in records])
    else:
      images = np.stack([r[self._image_key] for r in records])
    if self._label_key is None:
      return images, np.zeros(len(records), np.int32)
    return images, np.asarray([r[self._label_key] for r in records], np.int32)


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
  """A dataset stored as TFDS array_record files."""
  tfds_name: str
  prepare: Callable[[str], None] | None = None  # builds offline; None: the user runs `tfds build`
  image_key: str = "image"
  label_key: str | None = "label"
  crop_size: int | None = None  # variable-size images: centre-crop and resize to (at most) this
  allow_upsample: bool = False  # may data.resolution exceed the stored resolution?

  def open(self, split: str, data_config: ml_collections.ConfigDict) -> Source:
    data_dir = resolve_data_dir(data_config.data_dir)
    builder = tfds.builder(self.tfds_name, data_dir=data_dir)
    if not _is_prepared(builder):
      if self.prepare is None:
        raise MissingPath(tfds_build_hint(self.tfds_name, data_dir))
      if storage.is_remote(data_dir):
        # array_record reads object storage but cannot write it.
        raise MissingPath(
            f"Dataset {self.tfds_name!r} is not in {data_dir}, and it cannot be built straight "
            f"into object storage. Build it on a local disk and upload the folder:\n"
            f"  python -m {self.prepare.__module__} --out=/tmp/tfds\n"
            f"  gcloud storage cp -r /tmp/tfds/{self.tfds_name} {data_dir}/")
      self.prepare(data_dir)
      builder = tfds.builder(self.tfds_name, data_dir=data_dir)
    if split not in builder.info.splits:
      raise UserError(f"Dataset {self.tfds_name!r} has no split {split!r}; it has "
                      f"{sorted(builder.info.splits)}.")
    return _TfdsSource(builder, split, self, int(data_config.resolution))


class ImageFolderSource:
  """Every image file under a directory (recursively), centre-cropped and resized on reading.

  Labelled (`data.num_classes` > 0): the class of a file is its top-level subfolder, classes
  numbered in sorted name order. The whole folder is the one split, 'train'.
  """
  allow_upsample = True
  resolution = None

  def __init__(self, root: str, data_config: ml_collections.ConfigDict):
    self.root = root if storage.is_remote(root) else os.path.expanduser(root)
    where = f"data.name='image_folder:{root}'"
    if not root:
      raise UserError("image_folder needs a path: data.name='image_folder:/path/to/images'.")
    storage.check(self.root, where)
    if not storage.isdir(self.root):
      raise MissingPath(f"{where}: {self.root} is not a directory.")
    self.channels = int(data_config.channels)
    if self.channels not in (1, 3):
      raise UserError(f"{where}: data.channels must be 1 (greyscale) or 3 (RGB), got "
                      f"{self.channels}; images are converted to that.")
    self._mode = "L" if self.channels == 1 else "RGB"
    self._size = int(data_config.resolution)
    self.files = [f for f in storage.files_under(self.root)
                  if f.lower().endswith(images.IMAGE_SUFFIXES)]
    if not self.files:
      raise UserError(f"{where}: no image files ({', '.join(images.IMAGE_SUFFIXES)}) under "
                      f"{self.root}: put the training images there (subfolders are searched).")
    self.num_classes = 0
    self._labels = np.zeros(len(self.files), np.int32)
    if int(data_config.num_classes) > 0:
      top = [f.split("/")[0] if "/" in f else None for f in self.files]
      loose = [f for f, t in zip(self.files, top) if t is None]
      if loose:
        raise UserError(
            f"{where} with data.num_classes={data_config.num_classes}: the class of an image is "
            f"its top-level subfolder, but {len(loose)} images lie directly in {self.root} (e.g. "
            f"{loose[0]!r}). Move them into class folders, or set --config.data.num_classes=0.")
      self.class_names = sorted(set(top))
      index = {name: i for i, name in enumerate(self.class_names)}
      self._labels = np.asarray([index[t] for t in top], np.int32)
      self.num_classes = len(self.class_names)

  def __len__(self) -> int:
    return len(self.files)

  def _load(self, i: int) -> np.ndarray:
    path = storage.join(self.root, self.files[i])
    try:
      with storage.open_read(path) as f, Image.open(f) as image:
        image = image.convert(self._mode)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      raise UserError(f"Cannot read image {path}: {e}. Remove or replace the file.") from e
    return center_crop_resize(image, self._size)

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    indices = [int(i) for i in indices]
    return np.stack([self._load(i) for i in indices]), self._labels[indices]


def _open_image_folder(path: str, split: str, data_config: ml_collections.ConfigDict) -> Source:
  if split != "train":
    raise UserError(f"An image folder has one split, 'train' (all of "
                    f"data.name='image_folder:{path}'), not {split!r}.")
  return ImageFolderSource(path, data_config)


_TFDS: dict[str, TfdsDataset] = {
    "digits": TfdsDataset("digits", prepare=digits.prepare_digits, allow_upsample=True),
    "cifar10": TfdsDataset("cifar10"),
    "imagenet_resized/64x64": TfdsDataset("imagenet_resized/64x64"),
    # LSUN's JPEGs have a short side of ~256 and vary in size: cropped as the releases do.
    "lsun/bedroom": TfdsDataset("lsun/bedroom", label_key=None, crop_size=256),
    "lsun/cat": TfdsDataset("lsun/cat", label_key=None, crop_size=256),
}
# 'prefix:ARG' names -> opener(arg, split, config).
_PREFIXED: dict[str, Callable[[str, str, ml_collections.ConfigDict], Source]] = {
    "image_folder": _open_image_folder,
}


def known_names() -> list[str]:
  return sorted(_TFDS) + [f"{prefix}:PATH" for prefix in sorted(_PREFIXED)]


def open_source(data_config: ml_collections.ConfigDict, split: str) -> Source:
  """Opens `split` of the dataset `data_config.name`, preparing it first if that is offline."""
  name = data_config.name
  if name in _TFDS:
    return _TFDS[name].open(split, data_config)
  prefix, colon, arg = name.partition(":")
  if colon and prefix in _PREFIXED:
    return _PREFIXED[prefix](arg, split, data_config)
  raise UserError(f"Unknown dataset {name!r} (data.name); known: {', '.join(known_names())}.")
