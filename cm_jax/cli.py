"""What every entry point shares: logging set-up and turning user errors into clear exits."""
from __future__ import annotations

import contextlib
import logging
import sys

from absl import logging as absl_logging

from cm_jax.checkpoint import CheckpointError

# Errors whose message says what to do (the input is wrong, or training diverged and the message
# names the step and the last good checkpoint): print it, exit 2, no traceback.
USER_ERRORS = (ValueError, CheckpointError, FileNotFoundError, NotADirectoryError,
               FloatingPointError)


def setup_logging() -> None:
  absl_logging.set_verbosity(absl_logging.INFO)
  logging.getLogger("cm_jax").setLevel(logging.INFO)
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors_exit():
  try:
    yield
  except USER_ERRORS as e:
    logging.getLogger("cm_jax").debug("details", exc_info=True)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a bad --config override or config argument is a one-line error."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    # A config file that raised comes wrapped with its traceback: its last line is the message.
    message = lines[-1] if lines and "Traceback" in str(e) else str(e)
    print(f"error: {message}\nRun with --help for the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    key = str(e).strip("'\"")
    print(f"error: unknown config key {key!r} (overrides given: {', '.join(overrides) or 'none'}). "
          "Config keys are fixed (locked); see configs/base.py for the ones that exist.",
          file=sys.stderr)
    sys.exit(2)
  except (ValueError, TypeError) as e:
    print(f"error: bad config or flag value: {e}", file=sys.stderr)
    sys.exit(2)
