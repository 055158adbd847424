"""Opt-in pytest plugin: what each test module costs in CPU time and in XLA compiles.

  bash launch/test.sh -p tests.helpers.cost_report

Wall time hides the real cost on a small machine, where the xdist workers share the cores: this
reports, per module, CPU seconds (the test process plus the subprocesses it waited for) and the
seconds its own process spent in XLA backend compiles (subprocesses' compiles are in their CPU,
not in the compile column). Each process appends one JSON line per test to a directory the
controller makes; the controller prints the table at the end and removes the directory.
"""
import collections
import json
import os
import resource
import shutil
import tempfile
import time

import pytest

DIR_VAR = "CM_JAX_TEST_COST_DIR"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_seconds = [0.0]
_listening = [False]


def _listen_to_compiles():
  if _listening[0]:
    return
  import jax.monitoring  # imported here: pytest loads plugins before conftest sets jax's env
  def add(event, seconds, **_):
    if event == _COMPILE_EVENT:
      _compile_seconds[0] += seconds
  jax.monitoring.register_event_duration_secs_listener(add)
  _listening[0] = True


def _cpu_seconds():
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _is_worker(config) -> bool:
  return hasattr(config, "workerinput")


def pytest_configure(config):
  if not _is_worker(config):
    # Made before the xdist workers start, so they inherit it.
    os.environ[DIR_VAR] = tempfile.mkdtemp(prefix="cm_jax_test_cost_")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  _listen_to_compiles()
  start_wall, start_cpu, start_compile = time.time(), _cpu_seconds(), _compile_seconds[0]
  yield
  record = dict(test=item.nodeid, wall=time.time() - start_wall,
                cpu=_cpu_seconds() - start_cpu, compile=_compile_seconds[0] - start_compile)
  with open(os.path.join(os.environ[DIR_VAR], f"{os.getpid()}.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")


def pytest_terminal_summary(terminalreporter, config):
  if _is_worker(config):
    return
  directory = os.environ.pop(DIR_VAR, None)
  if not directory:
    return
  records = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name)) as f:
      records.extend(json.loads(line) for line in f)
  shutil.rmtree(directory, ignore_errors=True)
  modules = collections.defaultdict(lambda: dict(tests=0, wall=0.0, cpu=0.0, compile=0.0))
  for r in records:
    m = modules[r["test"].split("::")[0]]
    m["tests"] += 1
    for key in ("wall", "cpu", "compile"):
      m[key] += r[key]
  write = terminalreporter.write_line
  terminalreporter.section("cost per module (CPU s: the test process and its waited subprocesses)")
  write(f"{'cpu s':>8} {'compile s':>9} {'wall s':>8} {'tests':>5}  module")
  for name, m in sorted(modules.items(), key=lambda kv: -kv[1]["cpu"]):
    write(f"{m['cpu']:8.0f} {m['compile']:9.0f} {m['wall']:8.0f} {m['tests']:5d}  {name}")
  total = {k: sum(m[k] for m in modules.values()) for k in ("tests", "wall", "cpu", "compile")}
  write(f"{total['cpu']:8.0f} {total['compile']:9.0f} {total['wall']:8.0f} {total['tests']:5d}  "
        f"all ({total['cpu'] / 60:.1f} CPU-minutes)")
