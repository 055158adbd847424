"""The offline default dataset: scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset.

scikit-learn ships the 1797 images inside its wheel, so building needs no network, and it needs no
TensorFlow either: with features limited to `Tensor` and `ClassLabel` (no `Image`, whose encoder
calls TF) and `file_format='array_record'`, tfds 4.9 writes the shards, `features.json` and
`dataset_info.json` with numpy alone, and `tfds.data_source` / `builder.as_data_source` read them
back the same way. Two things do not work for a builder defined outside the TFDS catalogue:
`dataset_info_from_configs` (it reads metadata files next to the builder's module; we build the
`DatasetInfo` directly) and concurrent builds, which race on the final directory rename (see
`prepare_digits`).

Splits (fixed, stratified, no randomness involved): `test` takes 30 images of each digit, evenly
spaced through that digit's examples in scikit-learn's order (so spread across writers), 300 in
all; `train` is the other 1497. Pixel values 0..16 are scaled to 0..255 with rounding.

Training builds it on first use; the command builds it ahead (for a gs:// data_dir: locally, then
upload the folder):  python -m cm_jax.data.digits --out=DATA_DIR
"""
import os

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
TEST_PER_CLASS = 30
SPLIT_SIZES = {"train": 1497, "test": 300}


def test_indices(labels: np.ndarray) -> np.ndarray:
  """Indices (into scikit-learn's order) of the test split: 30 evenly spaced per class, sorted."""
  chosen = []
  for c in range(NUM_CLASSES):
    members = np.flatnonzero(labels == c)
    positions = np.round(np.linspace(0, len(members) - 1, TEST_PER_CLASS)).astype(int)
    chosen.append(members[positions])
  return np.sort(np.concatenate(chosen))


if __name__ == "__main__":
  # `python -m` runs this file a second time, after the package import has defined and
  # registered the builder below: defining it again would be refused, so the command stops here
  # and the imported module does the work. Its flag is defined here only: the library imports
  # this module, and absl flags are process-global.
  from absl import flags

  from cm_jax import cli
  from cm_jax.data import digits as _imported

  flags.DEFINE_string("out", None, "The data_dir to build into, a local folder (the dataset "
                      "lands in OUT/digits). For a gs:// data_dir, build locally and upload it.")
  flags.mark_flag_as_required("out")
  cli.run(_imported.main)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (UCI optdigits test set), uint8 [8, 8, 1] images with labels 0..9."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 1497 train / 300 test, stratified."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn's 8x8 handwritten digits, pixel values 0..16 scaled to 0..255.",
        features=tfds.features.FeaturesDict({
            # A plain Tensor, not tfds.features.Image: Image encodes PNGs through TensorFlow.
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = digits.target.astype(np.int64)
    is_test = np.zeros(len(labels), bool)
    is_test[test_indices(labels)] = True
    return {
        "train": self._generate_examples(images, labels, np.flatnonzero(~is_test)),
        "test": self._generate_examples(images, labels, np.flatnonzero(is_test)),
    }

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray):
    # The key (scikit-learn's index) fixes the example order TFDS writes: it sorts by key hash.
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}


def prepare_digits(data_dir: str) -> None:
  """Builds `digits` into `data_dir` unless it is already there. Offline; well under a second."""
  # TFDS builds in a temporary directory and renames it onto `data_path` when done, so the
  # directory existing means a complete build (and skips is_prepared's noisy warning).
  builder = Digits(data_dir=data_dir, file_format="array_record")
  if builder.data_path.exists():
    return
  try:
    builder.download_and_prepare(file_format="array_record")
  except OSError:
    # Another process (multi-host on a shared disk) renamed its finished build first.
    if not builder.data_path.exists():
      raise


def main() -> None:
  """`python -m cm_jax.data.digits --out=DATA_DIR` (the flag is defined where the command starts,
  at the top): build on a local disk, then upload the folder to a gs:// data_dir."""
  from absl import flags

  from cm_jax import storage
  from cm_jax.errors import UserError
  out = flags.FLAGS.out
  if storage.is_remote(out):
    # array_record reads object storage but cannot write it.
    raise UserError(f"--out={out}: the dataset cannot be built straight into object storage; "
                    "build it into a local folder, then upload OUT/digits to the data_dir.")
  prepare_digits(out)
  print(f"Built digits into {os.path.join(out, 'digits')}.")
