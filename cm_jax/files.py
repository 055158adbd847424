"""Writing files so that a crash never leaves a half-written one where a reader looks."""
from __future__ import annotations

import os
import tempfile


def write_atomically(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it over `path`."""
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
