"""The path layer: local (and mounted) paths go to `os`; `gs://` paths go to Google Cloud Storage
through gcsfs (the `[gcs]` extra). Any other scheme is refused, so a path like `s3://b/run`
never becomes a local folder named `s3:`.

Object stores differ from a POSIX disk in what the callers rely on, and each has its form here:
- no rename: an object appears whole when its upload finishes, so `write_bytes` is atomic as is;
  moving a folder is copy-then-delete (`move_tree`);
- no append: `append_text` reads the object and writes it back (one writer per workdir: the
  lock);
- no O_EXCL: `create_exclusive` uploads with an if-generation-match=0 precondition;
- no folders: a "directory" is a prefix holding objects, `makedirs` has nothing to do.

gcsfs caches listings, per instance; other writers (Orbax's arrays go through TensorStore)
change the bucket behind them, so every call here first drops the listings of every instance.

The command: python -m cm_jax.storage put LOCAL_FILE DEST (DEST a gs:// or local path), with
which the TPU launcher copies worker logs; the only flags are the shared ones.
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
from typing import Optional

from cm_jax.errors import MissingPath, UserError

SERVED_SCHEMES = ("gs",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path: str) -> Optional[str]:
  m = _SCHEME.match(str(path))
  return m.group(1).lower() if m else None


def is_remote(path: str) -> bool:
  return scheme(path) is not None


def check(path: str, flag: str = "path") -> None:
  """A scheme the layer cannot serve, or a gs:// path without a bucket, is a UserError."""
  s = scheme(path)
  if s is None:
    return
  if s not in SERVED_SCHEMES:
    raise UserError(f"{flag}={path}: the {s}:// scheme is not served; use gs://BUCKET/... or a "
                    "local or mounted path.")
  if not str(path)[len(s) + 3:].split("/")[0]:
    raise UserError(f"{flag}={path} names no bucket; write gs://BUCKET/path.")


@functools.lru_cache(maxsize=None)
def _gcs():
  try:
    import gcsfs
  except ImportError:
    raise UserError("gs:// paths need gcsfs: pip install 'cm_jax[gcs]'.") from None
  return gcsfs.GCSFileSystem()


def _fs(path: str):
  check(path)
  fs = _gcs()
  _forget_listings()
  return fs


def _forget_listings() -> None:
  """Drops the cached listings of every gcsfs instance in this process: ours, and the one etils
  (so Orbax) keeps with other options."""
  import fsspec
  for protocol in ("gs", "gcs"):
    for instance in list(getattr(fsspec.get_filesystem_class(protocol), "_cache", {}).values()):
      instance.invalidate_cache()


def join(path: str, *parts: str) -> str:
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def absolute(path: str) -> str:
  """os.path.abspath for local paths; a gs:// path is absolute already (abspath would turn it
  into ./gs:/bucket)."""
  return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return _fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
  """Names in a directory (FileNotFoundError when there is none)."""
  if not is_remote(path):
    return os.listdir(path)
  fs = _fs(path)
  if not fs.isdir(path):
    raise FileNotFoundError(path)
  return [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)
          if p.rstrip("/") != path[len("gs://"):].rstrip("/")]


def files_under(root: str) -> list[str]:
  """Sorted '/'-separated paths, relative to `root`, of every file below it (symlinked folders
  followed on disk); names starting with '.' and everything in such folders are left out."""
  if is_remote(root):
    prefix = root[len("gs://"):].rstrip("/") + "/"
    found = [p[len(prefix):] for p in _fs(root).find(root) if p.startswith(prefix)]
  else:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # not walked at all
      rel = os.path.relpath(dirpath, root)
      found += [f if rel == "." else posixpath.join(*rel.split(os.sep), f) for f in filenames]
  return sorted(p for p in found if not any(part.startswith(".") for part in p.split("/")))


def makedirs(path: str) -> None:
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
  else:
    check(path)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _fs(path).cat_file(path)
  with open(path, "rb") as f:
    return f.read()


def open_read(path: str):
  """A seekable binary file object (zip archives and images read parts of it)."""
  return _fs(path).open(path, "rb") if is_remote(path) else open(path, "rb")


def read_text(path: str) -> str:
  return read_bytes(path).decode()


def write_bytes_remote(path: str, data: bytes) -> None:
  _fs(path).pipe_file(path, data)


def create_exclusive(path: str, data: bytes) -> bool:
  """Writes `path` unless it exists; False when it does (one of two racing creators wins)."""
  if not is_remote(path):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    return True
  fs = _fs(path)
  if fs.exists(path):
    return False
  try:
    fs.pipe_file(path, data, mode="create")
  except (FileExistsError, OSError):
    if fs.exists(path):  # the precondition failed: another creator won
      return False
    raise
  return True


def append_text(path: str, text: str) -> None:
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  fs = _fs(path)
  old = fs.cat_file(path) if fs.exists(path) else b""
  fs.pipe_file(path, old + text.encode())


def remove(path: str) -> None:
  if is_remote(path):
    _fs(path).rm_file(path)
  else:
    os.remove(path)


def remove_empty_dir(path: str) -> None:
  """Removes a local directory that is empty; a prefix on an object store vanishes with its last
  object."""
  if not is_remote(path):
    os.rmdir(path)


def move_tree(src: str, dst: str) -> None:
  if is_remote(src):
    fs = _fs(src)
    fs.copy(src, dst, recursive=True)
    fs.rm(src, recursive=True)
  else:
    os.replace(src, dst)


def mtime(path: str) -> float:
  """Seconds since the epoch of the last write."""
  if not is_remote(path):
    return os.stat(path).st_mtime
  modified = _fs(path).modified(path)
  return modified.timestamp()


def download(path: str, local: str) -> None:
  _fs(path).get_file(path, local)


def upload(local: str, path: str) -> None:
  _fs(path).put_file(local, path)


def orbax_directory(path: str):
  """The directory to hand Orbax: a local absolute path, or for gs:// an etils path bound to the
  fsspec backend. etils would pick TensorFlow's file API whenever TensorFlow is installed, and
  training must never import it."""
  if not is_remote(path):
    return os.path.abspath(path)
  check(path)
  _gcs()  # gcsfs present, else the [gcs] advice
  return _fsspec_path_class()(path)


@functools.lru_cache(maxsize=None)
def _fsspec_path_class():
  from etils.epath import backend, gpath

  class FsspecPath(gpath.PosixGPath):
    @property
    def _backend(self):
      return backend.fsspec_backend

  return FsspecPath


def put(local: str, dest: str) -> None:
  """Copies a local file to `dest`, a gs:// or local path (parent folders made as needed)."""
  if not os.path.isfile(local):
    raise MissingPath(f"{local} is not a file: nothing to copy.")
  check(dest, "DEST")
  if is_remote(dest):
    upload(local, dest)
  else:
    makedirs(os.path.dirname(dest) or ".")
    shutil.copyfile(local, dest)


def _main(args: list[str]) -> None:
  """`python -m cm_jax.storage put LOCAL_FILE DEST`: the TPU launcher copies worker logs with it
  (launch/train.sh writes this positional form). No flags of its own: the library imports this
  module, and absl flags are process-global."""
  if len(args) != 3 or args[0] != "put":
    raise UserError(f"Give: put LOCAL_FILE DEST (a gs:// or local path); got: "
                    f"{' '.join(args) or 'nothing'}.")
  put(args[1], args[2])


if __name__ == "__main__":
  from cm_jax import cli
  cli.run(_main, takes_args=True)
