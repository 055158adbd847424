"""One writer per workdir: a lock file held for the life of a training run.

`WORKDIR/lock.json` is created with O_CREAT | O_EXCL (atomic on local disks and on NFS v3+,
the shared POSIX storage of clusters) and names its holder: host, pid, start time, command and a
random token. A heartbeat thread touches it every HEARTBEAT_S seconds. A second writer is
refused unless the lock is stale:
- same host, and the holder's pid is no longer alive (a crashed or killed run);
- another host, and the heartbeat is older than STALE_S (that host died or lost the storage).
A stale lock is renamed aside first (a rename succeeds for one taker only) and its token checked,
so two processes taking over the same stale lock cannot both win.

On an object store (gs://) the create is an upload with an if-generation-match=0 precondition
(storage.create_exclusive), the heartbeat rewrites the record, and a stale lock is taken over by
re-reading it and deleting it only when it is still the stale holder's (then the exclusive create
decides between racing takers).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

from cm_jax import storage
from cm_jax.errors import WorkdirBusy

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
STALE_S = 600.0

log = logging.getLogger("cm_jax")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def describe(holder: dict) -> str:
  return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
          f" ({holder.get('command', 'cm_jax')})")


class WorkdirLock:
  """Context manager: acquire on enter (WorkdirBusy when held by a live process), release on
  exit. The workdir must exist."""

  def __init__(self, workdir: str, command: str = "cm_jax.train", *,
               heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
    self.path = storage.join(workdir, LOCK_FILE)
    self.command, self.heartbeat_s, self.stale_s = command, heartbeat_s, stale_s
    self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
                   "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _read(self) -> Optional[dict]:
    """The holder's record; {} when the file exists but is not (yet) readable JSON."""
    try:
      return json.loads(storage.read_text(self.path))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _age(self) -> float:
    try:
      return time.time() - storage.mtime(self.path)
    except FileNotFoundError:
      return 0.0

  def _stale_reason(self, holder: dict) -> Optional[str]:
    if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
      return None if _pid_alive(holder["pid"]) else "that process is no longer running"
    age = self._age()
    if age > self.stale_s:
      return f"its heartbeat stopped {age:.0f} s ago"
    return None

  def _try_create(self) -> bool:
    return storage.create_exclusive(self.path, json.dumps(self.record).encode())

  def _take_over(self, holder: dict) -> bool:
    """Moves a stale lock aside; False when another process changed it meanwhile."""
    if storage.is_remote(self.path):
      current = self._read()
      if current is None or (holder and current.get("token") != holder.get("token")):
        return False
      storage.remove(self.path)
      return True
    aside = f"{self.path}.stale-{self.record['token']}"
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:
      return False
    try:
      with open(aside) as f:
        moved = json.load(f)
    except (OSError, ValueError):
      moved = {}
    if holder and moved.get("token") != holder.get("token"):
      try:  # a fresh lock of another taker: put it back unless a third one exists already
        os.link(aside, self.path)
      except FileExistsError:
        pass
      os.unlink(aside)
      return False
    os.unlink(aside)
    return True

  def acquire(self) -> None:
    for _ in range(5):
      if self._try_create():
        self._start_heartbeat()
        return
      holder = self._read()
      if holder is None:  # released meanwhile
        continue
      if not holder and self._age() < self.stale_s:  # being written right now
        time.sleep(0.2)
        holder = self._read()
        if holder is None:
          continue
      reason = self._stale_reason(holder) if holder else "its record is unreadable and old"
      if reason is None:
        raise WorkdirBusy(
            f"The workdir {os.path.dirname(self.path)} is in use by {describe(holder)}. Wait for "
            f"it to finish or stop it, or use another --workdir. If that process is gone and "
            f"was not cm_jax, delete {self.path}.")
      if self._take_over(holder):
        log.warning("Took over the lock of %s: %s.",
                    describe(holder) if holder else self.path, reason)
    raise WorkdirBusy(f"Could not lock {self.path}: other processes keep taking it. Make sure one "
                      "job at a time writes to this workdir.")

  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(self.heartbeat_s):
        try:
          if storage.is_remote(self.path):
            storage.write_bytes_remote(self.path, json.dumps(self.record).encode())
          else:
            os.utime(self.path)
        except OSError as e:
          log.error("Cannot refresh the workdir lock %s (%s); another writer may take over.",
                    self.path, e)
    self._thread = threading.Thread(target=beat, name="cm_jax-workdir-lock", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = self._read()
    if holder and holder.get("token") == self.record["token"]:
      storage.remove(self.path)
    elif holder is not None:
      log.warning("The workdir lock %s was taken over by %s while this run held it.", self.path,
                  describe(holder))

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
