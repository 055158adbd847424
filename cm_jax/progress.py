"""Progress bars for the long loops (sampling, editing, feature statistics, FID): tqdm on
stderr, on process 0 only; CM_JAX_PROGRESS=0 turns them off. Not on a terminal (a log file of
a pod worker), a bar redraws at most every 30 s instead of ten times a second."""
from __future__ import annotations

import os
import sys

import jax
import tqdm

ENV = "CM_JAX_PROGRESS"


def enabled() -> bool:
  return jax.process_index() == 0 and os.environ.get(ENV, "1") != "0"


def bar(total: int, desc: str, *, initial: int = 0, unit: str = "img",
        show: bool = True) -> tqdm.tqdm:
  """A bar over `total` items (update(n) after each chunk); a silent one where disabled or
  `show` is False."""
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                   disable=not (show and enabled()), mininterval=0.5 if tty else 30.0, dynamic_ncols=tty)
