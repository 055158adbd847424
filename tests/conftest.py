"""Session-wide set-up: unoptimised compiles, one persistent compilation cache, one offline TFDS
dir and one feature-net cache for every test and worker, and an order that lets the xdist workers
finish together."""
import os
import pathlib
import shutil
import tempfile

import pytest

from tests import CACHE_VAR, DATA_CACHES_VAR, UNOPTIMIZED_VAR

# Most tests run small programs once: XLA's optimisation passes cost more than they save (Flax's
# example tests do the same). Set before jax is imported, so this process and every subprocess
# (subprocess_env keeps it unless asked for optimised compiles) read it.
os.environ.setdefault(UNOPTIMIZED_VAR, "1")


def pytest_configure(config):
  """One compilation cache for the session: made by the process that starts the xdist workers
  (they inherit the variable), read and written by the workers' own compiles and by every
  single-process subprocess (subprocess_env). Every program is cached, however fast it compiled:
  the suite compiles the same small programs in many processes."""
  made = []
  for var, prefix in ((CACHE_VAR, "cm_jax_test_compilation_cache_"),
                      (DATA_CACHES_VAR, "cm_jax_test_data_caches_")):
    if var not in os.environ:
      os.environ[var] = tempfile.mkdtemp(prefix=prefix)
      made.append(os.environ[var])
  config._cm_jax_made_caches = made
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[CACHE_VAR]   # read when jax is imported
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
  for made in getattr(config, "_cm_jax_made_caches", ()):
    shutil.rmtree(made, ignore_errors=True)

# Modules that take minutes, longest first: scheduled first so that no worker starts one of them
# when the others are nearly done. Only the order changes; a module missing here runs later.
LONGEST_FIRST = (
    "test_default_recipe.py", "test_multiprocess.py", "test_parallel.py", "test_distill_cli.py",
    "test_gcs.py", "test_preemption.py", "test_bench.py", "test_bench_gpu_script.py",
    "test_convert_release_cli.py", "test_fsdp.py", "test_checkpoint_recovery.py",
    "test_user_errors.py", "test_meanflow_cli.py", "test_ncsnpp.py", "test_cli.py",
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: module order kept


@pytest.fixture(autouse=True)
def optimized_compiles(request):
  """Tests marked `optimized` (their time is execution, not compilation) compile with XLA's
  optimisations in this process; their subprocesses ask subprocess_env(optimized=True)."""
  if request.node.get_closest_marker("optimized") is None:
    yield
    return
  import jax
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", os.environ.get(UNOPTIMIZED_VAR) == "1")


@pytest.fixture(scope="session", autouse=True)
def isolated_caches():
  """Tests never touch ~/tensorflow_datasets or ~/.cache. The session's own dirs are shared by
  the xdist workers and every subprocess, so the digits dataset is built and the digit feature
  network trained once a session (both are safe for processes that fill them at once)."""
  root = pathlib.Path(os.environ[DATA_CACHES_VAR])
  saved = {k: os.environ.get(k) for k in ("TFDS_DATA_DIR", "XDG_CACHE_HOME")}
  os.environ["TFDS_DATA_DIR"] = str(root / "tfds")
  os.environ["XDG_CACHE_HOME"] = str(root / "cache")
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
