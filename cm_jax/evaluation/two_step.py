"""The 2-step intermediate level chosen by ternary search on FID (docs/maths.md §8), kept next to
the checkpoints as WORKDIR/eval/two_step_sigma.json for `python -m cm_jax.sample --steps=2` and
`python -m cm_jax.evaluate --steps=2` to use instead of config.sample.two_step_sigma.
"""
from __future__ import annotations

import json
from typing import Callable

from cm_jax import files, storage
from cm_jax.errors import UserError

FILE = "two_step_sigma.json"


def path(workdir: str) -> str:
  return storage.join(workdir, "eval", FILE)


def load(workdir: str) -> dict | None:
  """The search's result, or None when no search was run (or the file is unreadable)."""
  p = path(workdir)
  if not storage.isfile(p):
    return None
  try:
    found = json.loads(storage.read_text(p))
    float(found["sigma"])
    return found
  except (OSError, ValueError, KeyError, TypeError):
    return None


def two_step_sigma(workdir: str, config) -> tuple[float, str]:
  """(sigma, where it came from): the searched level when there is one, else the config's."""
  found = load(workdir)
  if found is not None:
    return float(found["sigma"]), (f"ternary search ({path(workdir)}, checkpoint "
                                   f"{found.get('checkpoint_step')}, FID {found.get('fid')})")
  return float(config.sample.two_step_sigma), "config.sample.two_step_sigma"


def save(workdir: str, result: dict) -> str:
  p = path(workdir)
  files.write_json_atomically(p, result)
  return p


def ternary_search(score: Callable[[int], float], lo: int, hi: int) -> tuple[int, dict[int, float]]:
  """argmin of a unimodal score over the integers [lo, hi], and every score evaluated (each index
  at most once). Shrinks by thirds while more than 3 candidates remain, then tries them all."""
  if lo > hi:
    raise UserError(f"empty search range [{lo}, {hi}]")
  seen: dict[int, float] = {}

  def f(i):
    if i not in seen:
      seen[i] = float(score(i))
    return seen[i]

  while hi - lo > 2:
    m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
    if f(m1) < f(m2):    # the minimum lies left of m2
      hi = m2 - 1
    elif f(m1) > f(m2):  # ... right of m1
      lo = m1 + 1
    else:                # a tie: between them
      lo, hi = m1, m2
  best = min(range(lo, hi + 1), key=f)
  return best, seen
