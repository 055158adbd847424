"""Where records come from: the dataset registry and random access to one split of a dataset.

The pipeline needs only a `Source`: its length, its channel and class counts, and `read(indices)`
returning uint8 images and int labels. A TFDS dataset becomes one through `tfds.data_source`-style
array_record access (no TensorFlow). Adding a TFDS dataset is one `TfdsDataset` line in `_TFDS`;
a dataset named with a prefix and an argument (`image_folder:PATH`) gets an opener in `_PREFIXED`.
Catalogue datasets read without TF too: `tfds.features.Image` decodes PNG/JPEG with OpenCV or PIL.
"""
from collections.abc import Callable, Sequence
import dataclasses
import os
from typing import Protocol

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from cm_jax.data import digits


class Source(Protocol):
  """Random access to one split."""
  channels: int
  num_classes: int  # 0 = unlabelled

  def __len__(self) -> int:
    ...

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, H, W, C] and int32 labels [n] (zeros if unlabelled), in `indices` order."""
    ...


def resolve_data_dir(data_dir: str) -> str:
  """The TFDS data dir a config means: '' is $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def tfds_build_hint(name: str, data_dir: str) -> str:
  """The message for a known TFDS dataset that is not prepared in `data_dir`."""
  return (
      f"TFDS dataset {name!r} is not prepared in {data_dir}. Build it once (it downloads, and "
      f"`tfds build` needs TensorFlow installed), then rerun:\n"
      f"  tfds build {name} --data_dir={data_dir} --file_format=array_record")


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  # Checking the directory first skips tfds's warning about a missing one.
  return builder.data_path.exists() and builder.is_prepared()


class _TfdsSource:
  """A split of a prepared TFDS dataset, read record by record from its array_record files."""

  def __init__(self, builder: tfds.core.DatasetBuilder, split: str, image_key: str,
               label_key: str | None):
    self._records = builder.as_data_source(split=split)
    self._image_key, self._label_key = image_key, label_key
    features = builder.info.features
    self.channels = int(features[image_key].shape[-1])
    label = features[label_key] if label_key else None
    self.num_classes = int(label.num_classes) if isinstance(label, tfds.features.ClassLabel) else 0

  def __len__(self) -> int:
    return len(self._records)

  def read(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    records = self._records.__getitems__([int(i) for i in indices])  # one batched file read
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

  def open(self, split: str, data_dir: str) -> Source:
    builder = tfds.builder(self.tfds_name, data_dir=data_dir)
    if not _is_prepared(builder):
      if self.prepare is None:
        raise FileNotFoundError(tfds_build_hint(self.tfds_name, data_dir))
      self.prepare(data_dir)
      builder = tfds.builder(self.tfds_name, data_dir=data_dir)
    if split not in builder.info.splits:
      raise ValueError(f"Dataset {self.tfds_name!r} has no split {split!r}; it has "
                       f"{sorted(builder.info.splits)}.")
    return _TfdsSource(builder, split, self.image_key, self.label_key)


_TFDS: dict[str, TfdsDataset] = {
    "digits": TfdsDataset("digits", prepare=digits.prepare_digits),
}
# 'prefix:ARG' names -> opener(arg, split, config); e.g. 'image_folder' will go here.
_PREFIXED: dict[str, Callable[[str, str, ml_collections.ConfigDict], Source]] = {}


def known_names() -> list[str]:
  return sorted(_TFDS) + [f"{prefix}:..." for prefix in sorted(_PREFIXED)]


def open_source(data_config: ml_collections.ConfigDict, split: str) -> Source:
  """Opens `split` of the dataset `data_config.name`, preparing it first if that is offline."""
  name = data_config.name
  if name in _TFDS:
    return _TFDS[name].open(split, resolve_data_dir(data_config.data_dir))
  prefix, colon, arg = name.partition(":")
  if colon and prefix in _PREFIXED:
    return _PREFIXED[prefix](arg, split, data_config)
  raise ValueError(f"Unknown dataset {name!r} (data.name); known: {', '.join(known_names())}.")
