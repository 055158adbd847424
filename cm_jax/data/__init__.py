"""Input data: TFDS array_record sources read through grain, without TensorFlow.

`train_batches` streams this process's rows of each global training batch, `load_split` loads a
split for evaluation, `prepare_digits` builds the offline default dataset.
"""
from cm_jax.data.digits import prepare_digits
from cm_jax.data.pipeline import check_config
from cm_jax.data.pipeline import dataset_size
from cm_jax.data.pipeline import load_split
from cm_jax.data.pipeline import train_batches
from cm_jax.data.sources import known_names
from cm_jax.data.sources import resolve_data_dir
from cm_jax.data.sources import tfds_build_hint

__all__ = ["check_config", "dataset_size", "known_names", "load_split", "prepare_digits",
           "resolve_data_dir",
           "tfds_build_hint", "train_batches"]
