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


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A local GCS emulator with one bucket (tests/helpers/gcs_emulator.py); yields the bucket's
  gs:// root. The variables that point clients at it are set for the session's remainder of
  this fixture and inherited by test subprocesses."""
  from tests.helpers import gcs_emulator
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs") / "server.log")):
    yield f"gs://{gcs_emulator.BUCKET}"
