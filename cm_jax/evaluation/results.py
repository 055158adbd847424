"""WORKDIR/eval/results.jsonl: one JSON row per (checkpoint, sampling plan, sample count, seed,
features, reference, weights), found again by the hash of that key, so a finished evaluation is
never recomputed; and the paper's table of those rows."""
from __future__ import annotations

import hashlib
import json

from cm_jax import plans, storage

FILE = "results.jsonl"


def row_key(step: int, plan, in_time: bool, num_samples: int, seed: int, features: str,
            reference: str, params: str) -> dict:
  return {"checkpoint_step": step, **plans.describe_plan(plan, in_time),
          "num_samples": num_samples, "seed": seed, "features": features,
          "reference": reference, "params": params}


def key_id(key: dict) -> str:
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read(eval_dir: str) -> list[dict]:
  path = storage.join(eval_dir, FILE)
  if not storage.isfile(path):
    return []
  rows = []
  for line in storage.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue  # a line cut short by a kill
  return rows


def find(eval_dir: str, kid: str) -> dict | None:
  return next((row for row in read(eval_dir) if row.get("key_id") == kid), None)


def append(eval_dir: str, row: dict) -> None:
  storage.append_text(storage.join(eval_dir, FILE), json.dumps(row) + "\n")


def format_table(rows: list[dict]) -> str:
  """The paper's layout: one row per checkpoint, one column per sampling plan, FID (IS)."""
  names, by_step = [], {}
  for r in rows:
    name = f"{r['solver']} ({r['nfe']} NFE)" if "solver" in r else \
        f"{r['nfe']} step{'s' if r['nfe'] > 1 else ''}"
    if name not in names:
      names.append(name)
    by_step.setdefault(r["checkpoint_step"], {})[name] = r
  head = "| checkpoint | samples | " + " | ".join(f"{p} FID (IS)" for p in names) + " |"
  lines = [head, "|" + "---|" * (len(names) + 2)]
  for step in sorted(by_step):
    cells = by_step[step]
    num = next(iter(cells.values()))["num_samples"]
    vals = [f"{cells[p]['fid']:.2f} ({cells[p]['is_mean']:.2f})" if p in cells else "-"
            for p in names]
    lines.append(f"| {step} | {num} | " + " | ".join(vals) + " |")
  return "\n".join(lines)
