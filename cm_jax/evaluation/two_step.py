"""The search behind `cm_jax.evaluate --search_ts`: the 2-step intermediate level that minimises
FID (docs/maths.md §8). cm_jax.plans keeps its result (WORKDIR/eval/two_step_sigma.json), which
every later 2-step plan in sigma goes through."""
from __future__ import annotations

from typing import Callable

from cm_jax.errors import UserError


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
