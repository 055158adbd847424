"""Writing files so that a crash never leaves a half-written one where a reader looks, and
checking output paths before the work that fills them."""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
import uuid
import zipfile

import numpy as np

from cm_jax import storage
from cm_jax.errors import MissingPath, UserError


def _read_umask() -> int:
  mask = os.umask(0)  # the only portable way to read it; set back at once (at import, before
  os.umask(mask)      # any thread of ours writes files)
  return mask


_UMASK = _read_umask()


def write_atomically(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it over `path` (on an object
  store, one upload: the object appears whole or not at all)."""
  if storage.is_remote(path):
    storage.write_bytes_remote(path, data)
    return
  folder = os.path.dirname(path) or "."
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


@contextlib.contextmanager
def exclusive(path: str):
  """Holds an exclusive lock on the local file `path` (made if missing) while the block runs, so
  that processes on one machine filling the same cache wait for the first instead of repeating its
  work. Where the lock file cannot be made or locked the block runs unlocked: the lock only saves
  work."""
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    f = open(path, "a")
  except OSError:
    yield
    return
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX)
    except OSError:
      pass
    yield   # closing the file releases the lock


def write_npz_atomically(path: str, **arrays) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_atomically(path, buffer.getvalue())


def write_json_atomically(path: str, obj, indent: int = 2) -> None:
  write_atomically(path, json.dumps(obj, indent=indent).encode())


def _nearest_existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def check_output_dir(path: str, flag: str, shown: str = "") -> None:
  """`path` is a directory that exists or can be created, and can be written to; errors quote
  `flag`=`shown` (default: `path`)."""
  shown = shown or path
  if storage.is_remote(path):
    _check_remote_dir(path, flag, shown)
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f"{flag}={shown} is a file, not a directory: give a directory path.")
  base = _nearest_existing(path)
  if not os.path.isdir(base):
    raise UserError(f"{flag}={shown}: {base} is a file, so no directory can be made there.")
  try:  # a real write, not os.access: read-only mounts and root's view need it
    fd, probe = tempfile.mkstemp(dir=base, prefix=".cm_jax-write-check-")
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise UserError(f"{flag}={shown}: cannot write in {base} ({e.strerror}); give a writable "
                    "place.") from None


def _check_remote_dir(path: str, flag: str, shown: str) -> None:
  """A real write of a probe object, so a missing bucket or a missing permission fails here."""
  storage.check(path, flag)
  if storage.isfile(path):
    raise UserError(f"{flag}={shown} is an object, not a folder: give a folder path.")
  probe = storage.join(path, f".cm_jax-write-check-{uuid.uuid4().hex}")  # unique per host too
  try:
    storage.write_bytes_remote(probe, b"")
    storage.remove(probe)
  except OSError as e:
    raise UserError(f"{flag}={shown}: cannot write there ({type(e).__name__}: {e}); check the "
                    "bucket exists and this machine's account may write to it.") from None


def check_output_file(path: str, flag: str, suffix: str = "") -> None:
  """`path` can be written as a file: right suffix, not a directory, writable folder."""
  if suffix and not path.endswith(suffix):
    raise UserError(f"{flag} must name a {suffix} file, got {path!r}.")
  if storage.is_remote(path):
    storage.check(path, flag)
    if storage.isdir(path):
      raise UserError(f"{flag}={path} is an existing folder; name a file.")
    _check_remote_dir(path.rsplit("/", 1)[0], flag, path)
    return
  if os.path.isdir(path):
    raise UserError(f"{flag}={path} is an existing directory; name a file.")
  check_output_dir(os.path.dirname(os.path.abspath(path)), flag, shown=path)


def open_npz(path: str, what: str):
  """np.load of an .npz, never unpickling; a file that is not one is a UserError naming `what`
  (numpy's own message suggests allow_pickle, which a library must never advise)."""
  if not storage.exists(path):
    raise MissingPath(f"{what} {path} does not exist.")
  if not storage.isfile(path):
    raise UserError(f"{what} {path} is a directory, not an .npz file.")
  try:
    data = np.load(io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else path,
                   allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(f"{what} {path} is not a readable .npz archive of arrays "
                    f"({type(e).__name__}); write it with numpy.savez.") from None
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise UserError(f"{what} {path} is a single .npy array, not an .npz archive; write it with "
                    "numpy.savez(path, arr_0=images).")
  return data
