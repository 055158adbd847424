"""Session-wide fixtures: one offline TFDS dir and one feature-net cache for every test."""
import os

import pytest

from tests import CACHE_VAR


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
  """Tests never touch ~/tensorflow_datasets or ~/.cache; subprocesses inherit the same dirs."""
  root = tmp_path_factory.mktemp("caches")
  saved = {k: os.environ.get(k) for k in ("TFDS_DATA_DIR", "XDG_CACHE_HOME", CACHE_VAR)}
  os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
  os.environ["XDG_CACHE_HOME"] = str(root / "cache")
  os.environ[CACHE_VAR] = str(root / "jax_compilation_cache")  # subprocess_env passes it on
  yield root
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
