"""The project's error types: a mistake in what the user gave, as opposed to a bug.

Raised where the input is understood, so the message names the flag, key or path and says what
to do. The CLIs print such an error as one line and exit 2; everything else keeps its traceback.
They subclass the built-in types they replace, so callers catching ValueError keep working.
"""


class UserError(ValueError):
  """A wrong flag, config value, path or file; the message says what to do."""


class MissingPath(UserError, FileNotFoundError):
  """A path the user named does not exist or is not what it must be."""


class Diverged(UserError, FloatingPointError):
  """Training produced non-finite values; the message names the step and the last good save."""


class WorkdirBusy(UserError, RuntimeError):
  """Another live process holds the workdir's lock."""


class PathExists(UserError, FileExistsError):
  """An output path the user named already holds what the command would write."""


class MissingDependency(UserError, ImportError):
  """An optional package (a pip extra) is not installed; the message names the install."""
