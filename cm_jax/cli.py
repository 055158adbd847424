"""What every entry point shares: logging set-up, the exit statuses and the error policy.

A UserError (cm_jax.errors) is a mistake in what was given: one `error:` line, exit 2. Anything
else is a bug and keeps its traceback. `--debug` shows the traceback of user errors as well.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from typing import Callable

from absl import flags
from absl import logging as absl_logging

from cm_jax.errors import UserError

EXIT_USER_ERROR = 2
# Stopped by SIGTERM / Ctrl-C after saving: run the same command to resume (EX_TEMPFAIL, the
# "try again" status preemptible-job schedulers requeue on).
EXIT_PREEMPTED = 75

_DEBUG = flags.DEFINE_bool("debug", False, "Print the full traceback of every error, including "
                           "the one-line errors for mistakes in flags, configs and paths.")


def _drop_closed_loop_noise(unraisable) -> None:
  """A failed Orbax restore leaves TensorStore reads whose callbacks fire into Orbax's closed
  asyncio loop at exit, each printing 'Event loop is closed' after the real error: drop those."""
  e = unraisable.exc_value
  if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def setup_logging() -> None:
  """INFO for cm_jax, unless --verbosity was given; third-party loggers at WARNING."""
  sys.unraisablehook = _drop_closed_loop_noise
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.INFO)
  level = absl_logging.get_absl_logger().getEffectiveLevel()
  logging.getLogger("cm_jax").setLevel(min(level, logging.INFO))
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def report_user_error(e: BaseException, debug: bool = False) -> int:
  if debug:
    traceback.print_exception(e, file=sys.stderr)
  else:
    # A failed restore leaves sibling read tasks whose exceptions nobody retrieves; asyncio logs
    # each with its traceback when they are collected at exit (seen on loaded machines). They
    # repeat the error just reported, so after it the asyncio logger stays quiet.
    logging.getLogger("asyncio").disabled = True
  print(f"error: {e}", file=sys.stderr)
  return EXIT_USER_ERROR


@contextlib.contextmanager
def user_errors_exit():
  """A UserError becomes `error: <message>` and exit status 2; anything else propagates."""
  try:
    yield
  except UserError as e:
    sys.exit(report_user_error(e, debug=flags.FLAGS.is_parsed() and _DEBUG.value))


def _check_config_files() -> None:
  """ml_collections defers a config file that failed to load until first use; fail here."""
  from ml_collections.config_flags import config_flags  # the module: is_config_flag lives there
  for name in flags.FLAGS:
    flag = flags.FLAGS[name]
    if config_flags.is_config_flag(flag) and flag.present:
      error = getattr(flag.value, "_error", None)  # the stand-in for a file that did not load
      if isinstance(error, OSError):
        path = config_flags.get_config_filename(flag).split(":")[0]
        where = "does not exist" if not os.path.exists(path) else f"cannot be read ({error})"
        print(f"error: --{name}: the config file {path} {where}. Give one under configs/, e.g. "
              "--config=configs/digits.py:method=ict.", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


# Read by every command (user_errors_exit, setup_logging): listed by each one's --help.
SHARED_FLAGS = ("debug", "verbosity")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing where a bad --config override or config argument is a one-line error.

  --help lists the command's own flags and the shared ones, and exits 0."""
  for name in SHARED_FLAGS:
    # --help shows the key flags of the main module, named by sys.argv[0] as absl names it.
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  try:
    rest = flags.FLAGS(argv)
    _check_config_files()
    return rest
  except SystemExit as e:
    # absl's --help / --helpfull print the usage and exit 1 while parsing; no other flag exits
    # there. Help that was asked for is no failure.
    sys.exit(0 if e.code == 1 else e.code)
  except flags.Error as e:
    lines = [l for l in str(e).splitlines() if l.strip()]
    # A config file that raised comes wrapped with its traceback: its last line is the message.
    message = lines[-1] if lines and "Traceback" in str(e) else str(e)
    print(f"error: {message}\nRun with --help for the flags.", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except (AttributeError, KeyError) as e:
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    key = str(e).strip("'\"")
    print(f"error: unknown config key {key!r} (overrides given: {', '.join(overrides) or 'none'}). "
          "Config keys are fixed (locked); see cm_jax/defaults.py for the ones that exist.",
          file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except (ValueError, TypeError) as e:
    print(f"error: bad config or flag value: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(body: Callable, *, takes_args: bool = False, distributed: bool = False) -> None:
  """Runs an entry point: absl parses the flags (a bad one is one `error:` line), logging is set
  up, a UserError ends as one `error:` line with exit status 2 and anything else keeps its
  traceback. `distributed`: join the launcher's other processes first, before anything touches a
  JAX backend. body(args) gets the positional arguments when `takes_args`; otherwise every input
  is a flag, and a stray argument is a mistake."""
  from absl import app

  def main(argv: list[str]) -> None:
    setup_logging()
    with user_errors_exit():
      args = argv[1:]
      if takes_args:
        body(args)
        return
      if args:
        raise UserError(f"Unexpected arguments: {' '.join(args)}; every input is a --flag "
                        "(see --help).")
      if distributed:
        from cm_jax import parallel  # jax: only for the commands that run on several processes
        parallel.maybe_initialize_distributed()
      body()

  app.run(main, flags_parser=parse_flags)
