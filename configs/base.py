"""The one base config every dataset config derives from.

Dataset files (configs/digits.py, ...) override what differs; the method is chosen by the config
argument (`configs/digits.py:method=ict`), and `runlocal` shrinks any config to a smoke run.
"""
import ml_collections

from cm_jax.defaults import base_config
from cm_jax.methods import NAMES as METHODS

__all__ = ["METHODS", "get_base_config", "parse_args"]


def get_base_config() -> ml_collections.ConfigDict:
  """Every key with its default (cm_jax/defaults.py, where the keys are documented)."""
  return base_config()


def parse_args(arg: str | None) -> tuple[str, bool, dict[str, str]]:
  """Parses `method=ict,runlocal` into (method, runlocal, other key=value pairs)."""
  method, runlocal, rest = None, False, {}
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    if not sep:
      if key != "runlocal":
        raise ValueError(f"Unknown config argument {part!r}: expected 'method=NAME' or 'runlocal'.")
      runlocal = True
    elif key == "method":
      method = value
    else:
      rest[key] = value
  return method, runlocal, rest
