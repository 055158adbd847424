"""Runs a `python -m cm_jax.X` command inside the test process: the module executed as __main__
(runpy) with its argv, its stdout/stderr captured at the file-descriptor level, its exit status
taken from SystemExit, and the flags it defined removed afterwards, so the next command can define
its own (absl flags are process-global): the command's own flags and those defined by calls into
modules imported earlier go; those a library defines when the command first imports it stay, as
the library stays imported. It saves a subprocess's interpreter start, imports and
backend initialisation per call, and shares the process's compiled programs.

What a subprocess keeps apart and this does not: the device count (1 here), environment
variables read at import, and signal handling; tests that need those run real subprocesses
(cli_runner.run_cli does so for devices > 1, and one real `python -m` per command is kept in
test_entry_points.py for the wiring)."""
import contextlib
import logging
import os
import runpy
import subprocess
import sys
import tempfile
import traceback

from absl import app, flags
from absl import logging as absl_logging

# Defined before any command runs: flags that modules define at import (and absl.app's help
# flags, defined once per process) belong to the process, not to a command, and outlive it.
import cm_jax.cli  # noqa: F401  (--debug)
import cm_jax.parallel  # noqa: F401
import cm_jax.sampling_flags  # noqa: F401  (its groups are defined by calls, not at import)
import orbax.checkpoint  # noqa: F401

app.define_help_flags()


@contextlib.contextmanager
def _captured():
  """(stdout file, stderr file) receiving both Python's and the C libraries' writes."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    # Log handlers made earlier hold the streams they were given: point those that print to the
    # terminal at the new stderr (pytest's own capture handlers keep theirs).
    # absl's own handler, which the command's app.run puts on the root logger, always prints to
    # this command's stderr (not to a stream an earlier command left it).
    terminal = {id(saved_streams[0]), id(saved_streams[1]), id(sys.__stdout__), id(sys.__stderr__)}
    absl_handler = absl_logging.get_absl_handler().python_handler
    moved = [(h, h.stream) for h in logging.getLogger().handlers
             if isinstance(h, logging.StreamHandler) and id(h.stream) in terminal
             and h is not absl_handler] + [(absl_handler, absl_handler.stream)]
    for h, _ in moved:
      h.stream = sys.stderr
    try:
      yield out, err
    finally:
      for h, stream in moved:
        h.stream = stream
      for stream in (sys.stdout, sys.stderr):
        stream.flush()
        stream.close()
      sys.stdout, sys.stderr = saved_streams
      os.dup2(saved_fds[0], 1)
      os.dup2(saved_fds[1], 2)
      os.close(saved_fds[0])
      os.close(saved_fds[1])


@contextlib.contextmanager
def _global_state_kept():
  """What a command sets for its process and a test process keeps: logging (absl's handler on
  the root logger, levels, the asyncio logger a user error silences) and the unraisable hook."""
  root = logging.getLogger()
  names = ("asyncio", "cm_jax", "absl", "orbax", "jax._src")
  saved = (root.handlers[:], root.level, sys.unraisablehook,
           {n: (logging.getLogger(n).level, logging.getLogger(n).disabled) for n in names})
  try:
    yield
  finally:
    root.handlers[:], level, sys.unraisablehook, loggers = saved
    root.setLevel(level)
    for n, (level, disabled) in loggers.items():
      logging.getLogger(n).setLevel(level)
      logging.getLogger(n).disabled = disabled


def _status(code) -> int:
  if code is None:
    return 0
  return code if isinstance(code, int) else 1


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  """`python -m module args...` in this process, as a CompletedProcess (returncode, stdout,
  stderr): 0 on success, the SystemExit status, 1 with a traceback on stderr for an exception."""
  values = flags.FLAGS
  before, imported = set(values), set(sys.modules)
  values.unparse_flags()  # nothing of an earlier command's values carries over
  saved_argv = sys.argv
  with _global_state_kept(), _captured() as (out, err):
    if absl_logging.get_absl_handler() not in logging.getLogger().handlers:
      # as in the command's own process, where app.run puts it there (once per process)
      logging.getLogger().addHandler(absl_logging.get_absl_handler())
    try:
      sys.argv = [module, *args]
      runpy.run_module(module, run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:
      code = _status(e.code)
    except BaseException:  # a bug: the traceback a subprocess would print
      traceback.print_exc()
      code = 1
    finally:
      sys.argv = saved_argv
      for name in set(values) - before:
        owner = values.find_module_defining_flag(name)
        if owner in imported or owner.endswith(".py"):  # a call, or the command (__main__)
          delattr(values, name)
      values.unparse_flags()
    out.seek(0)
    err.seek(0)
    stdout, stderr = out.read(), err.read()
  return subprocess.CompletedProcess([sys.executable, "-m", module, *args], code, stdout, stderr)
