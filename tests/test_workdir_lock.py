"""The workdir lock on its own (no JAX): one holder, stale locks taken over, heartbeat, release."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from cm_jax import workdir_lock
from cm_jax.errors import WorkdirBusy


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _write_lock(workdir, **holder):
  record = {"host": "vm", "pid": 1, "started": "then", "command": "cm_jax.train", "token": "t0",
            **holder}
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))
  return workdir / workdir_lock.LOCK_FILE


def test_second_holder_is_refused_with_the_first_named(tmp_path):
  with workdir_lock.WorkdirLock(str(tmp_path)) as first:
    record = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["token"] == first.record["token"]
    with pytest.raises(WorkdirBusy, match=rf"in use by pid {os.getpid()} on {record['host']}"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released
  with workdir_lock.WorkdirLock(str(tmp_path)):  # free again
    pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  _write_lock(tmp_path, host=lock.record["host"], pid=_dead_pid())
  with caplog.at_level(logging.WARNING, logger="cm_jax"):
    lock.acquire()
  assert "no longer running" in caplog.text
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["token"] == lock.record["token"]
  lock.release()


def test_other_host_lock_is_kept_while_its_heartbeat_is_fresh(tmp_path):
  path = _write_lock(tmp_path, host="elsewhere", pid=1)
  with pytest.raises(WorkdirBusy, match="elsewhere"):
    workdir_lock.WorkdirLock(str(tmp_path), stale_s=600).acquire()
  old = time.time() - 601
  os.utime(path, (old, old))
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_s=600)
  lock.acquire()  # the heartbeat stopped 10 minutes ago: taken over
  assert json.loads(path.read_text())["token"] == lock.record["token"]
  lock.release()


def test_live_process_on_this_host_keeps_its_lock_however_old(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), stale_s=1)
  path = _write_lock(tmp_path, host=lock.record["host"], pid=os.getppid())
  os.utime(path, (time.time() - 100,) * 2)
  with pytest.raises(WorkdirBusy, match=f"pid {os.getppid()}"):
    lock.acquire()


def test_heartbeat_refreshes_and_release_spares_a_foreign_lock(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  path = tmp_path / workdir_lock.LOCK_FILE
  os.utime(path, (time.time() - 100,) * 2)
  time.sleep(0.3)
  assert time.time() - path.stat().st_mtime < 5
  lock._stop.set()
  lock._thread.join()
  _write_lock(tmp_path, host="elsewhere", token="theirs")  # taken over meanwhile
  lock.release()
  assert json.loads(path.read_text())["token"] == "theirs"


def test_take_over_never_removes_a_fresh_lock_of_another_taker(tmp_path):
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  stale = {"host": "elsewhere", "token": "stale"}
  _write_lock(tmp_path, host="elsewhere", token="fresh")  # another taker won the race
  assert not lock._take_over(stale)
  assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["token"] == "fresh"
