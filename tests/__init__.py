"""Shared helpers for tests that run the real CLIs or multi-device code in subprocesses."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The session's persistent compilation cache (made by conftest.py, shared by the xdist workers and
# single-process subprocesses): a process that compiles a program another one compiled loads it.
CACHE_VAR = "CM_JAX_TEST_COMPILATION_CACHE"

# The session's TFDS dir and XDG cache (the digit feature network), made by conftest.py like the
# compilation cache and shared by the workers and subprocesses.
DATA_CACHES_VAR = "CM_JAX_TEST_DATA_CACHES"

# jax reads it at import; conftest.py sets it for the suite (tests compile small programs once).
UNOPTIMIZED_VAR = "JAX_DISABLE_MOST_OPTIMIZATIONS"


def subprocess_env(devices: int = 1, compilation_cache: bool = True, optimized: bool = False,
                   **extra: str) -> dict:
  """The environment of a test subprocess. compilation_cache=False for runs of several processes
  under jax.distributed: the cache is kept to single-process runs. optimized=True for a run whose
  time is execution (many training steps): XLA then optimises as it does for users."""
  env = dict(os.environ)
  if optimized:
    env.pop(UNOPTIMIZED_VAR, None)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if compilation_cache and env.get(CACHE_VAR):
    env["JAX_COMPILATION_CACHE_DIR"] = env[CACHE_VAR]
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env
