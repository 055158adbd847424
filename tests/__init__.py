"""Shared helpers for tests that run the real CLIs or multi-device code in subprocesses."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The session's persistent compilation cache (set by conftest.py): a CLI that compiles the programs
# an earlier subprocess compiled loads them instead (a digits training run: ~90 s -> ~22 s).
CACHE_VAR = "CM_JAX_TEST_COMPILATION_CACHE"


def subprocess_env(devices: int = 1, compilation_cache: bool = True, **extra: str) -> dict:
  """The environment of a test subprocess. compilation_cache=False for runs of several processes
  under jax.distributed: the cache is kept to single-process runs."""
  env = dict(os.environ)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  if compilation_cache and env.get(CACHE_VAR):
    env["JAX_COMPILATION_CACHE_DIR"] = env[CACHE_VAR]
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env
