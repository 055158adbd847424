"""Tiny random stand-ins for catalogue TFDS datasets, written as real array_record files.

`prepare_fake('cifar10', data_dir)` writes a few random examples under the catalogue's own name,
version and features, so that `tfds.builder('cifar10', data_dir=data_dir)` finds a prepared
dataset and the pipeline reads it exactly as it reads the real one (array_record files, images
encoded and decoded through `tfds.features.Image`). For smoke runs and tests on machines without
the data; no TensorFlow and no network needed. (`tfds.testing.mock_data` does not serve here: in
tfds 4.9 its mocked data source breaks the batched `__getitems__` read the pipeline uses.)

Usage: python -m cm_jax.data.fake --dataset=cifar10 --out=/tmp/fake_tfds [--num_examples=64]
       then train with --config.data.data_dir=/tmp/fake_tfds
"""
import io

from absl import flags
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from cm_jax.errors import PathExists, UserError

# The splits each catalogue dataset has; the fake writes the same ones.
SPLITS = {
    "cifar10": ("train", "test"),
    "imagenet_resized/64x64": ("train", "validation"),
    "lsun/bedroom": ("train", "validation"),
    "lsun/cat": ("train",),  # LSUN's object categories ship no validation split
}
FAKE_NOTE = "FAKE random data written by cm_jax.data.fake: not the real dataset."


def _random_example(features: tfds.features.FeaturesDict, rng: np.random.Generator, key: int):
  example = {}
  for name, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      h, w, c = feature.shape
      if h is None or w is None:  # variable-size JPEGs (LSUN): landscape and portrait
        h, w = (int(v) for v in rng.integers(24, 49, 2))
      pixels = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
      fmt = feature.encoding_format or "png"
      buffer = io.BytesIO()
      Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(
          buffer, format="JPEG" if fmt == "jpeg" else fmt.upper())
      example[name] = buffer.getvalue()  # encoded bytes: no TensorFlow encoder involved
    elif isinstance(feature, tfds.features.ClassLabel):
      example[name] = int(rng.integers(0, feature.num_classes))
    elif isinstance(feature, tfds.features.Text):
      example[name] = f"fake_{key:06d}"
    else:
      raise NotImplementedError(f"No fake values for feature {name!r} ({feature}).")
  return example


def prepare_fake(name: str, data_dir: str, num_examples: int = 64, seed: int = 0) -> None:
  """Writes `num_examples` random examples per split of catalogue dataset `name` into data_dir.

  Refuses a data_dir that already holds the dataset (real or fake), so it never overwrites one.
  """
  if name not in SPLITS:
    raise UserError(f"No fake for {name!r}; choose one of {', '.join(SPLITS)}.")
  real = tfds.builder(name, data_dir=data_dir)
  if real.data_path.exists():
    raise PathExists(f"{real.data_path} already exists: not writing fake data over it.")
  features = real.info.features
  base_cls = type(real)
  splits = SPLITS[name]

  class Fake(base_cls, skip_registration=True):  # pylint: disable=missing-class-docstring
    name = base_cls.name

    def _info(self):
      # Built directly: catalogue `_info`s may read metadata files next to their own module.
      return tfds.core.DatasetInfo(builder=self, description=FAKE_NOTE, features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):  # pylint: disable=arguments-differ
      rng = np.random.default_rng([seed, splits.index(split)])
      for i in range(num_examples):
        yield i, _random_example(features, rng, i)

  config = name.partition("/")[2] or None
  builder = Fake(data_dir=data_dir, config=config, file_format="array_record")
  builder.download_and_prepare(file_format="array_record")


def main() -> None:
  f = flags.FLAGS
  prepare_fake(f.dataset, f.out, f.num_examples, f.seed)
  print(f"Wrote fake {f.dataset} ({f.num_examples} examples per split) to {f.out}.")


if __name__ == "__main__":
  # The flags exist only when this module is the command: tests and tools import it, and absl
  # flags are process-global (--out would clash with cm_jax.sample's).
  from cm_jax import cli
  flags.DEFINE_enum("dataset", None, sorted(SPLITS), "The catalogue dataset to stand in for.")
  flags.DEFINE_string("out", None, "The data_dir to write it into (DATA_DIR/NAME/VERSION); "
                      "train with --config.data.data_dir=DATA_DIR.")
  flags.DEFINE_integer("num_examples", 64, "Random examples per split.", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the random examples.")
  flags.mark_flags_as_required(["dataset", "out"])
  cli.run(main)
