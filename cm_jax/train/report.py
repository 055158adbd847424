"""python -m cm_jax.train.report WORKDIR[@STEP] ...

Prints the digits quality table (markdown), one row per run: a workdir's newest scores, or those
of checkpoint STEP (scored on demand, read-only). The runs are positional; the only flags are
the shared ones.

The module is also the end-of-run report: 1- and 2-step samples (EDM: the ODE solver's), a grid,
and the digits quality figure.

Inception FID means nothing for 16x16 digits, so the default run scores samples by a Frechet
distance in the feature space of a small digit classifier the project trains (cached), beside the
same figure for held-out real digits: the floor a perfect generator would reach.
"""
from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from cm_jax import cli, data, files, images, plans, storage
from cm_jax.errors import MissingPath, UserError
from cm_jax.evaluation import digit_features
from cm_jax.train import restore

log = logging.getLogger("cm_jax")


def score_digits(exp, params, num_samples: int = 0, seed: int = 1) -> tuple[dict, dict]:
  """Quality of each sampling plan's samples: {plan: report} plus the uint8 samples themselves."""
  config = exp.config
  reference = data.load_split(config.data, "train")
  heldout = data.load_split(config.data, "test")
  net = digit_features.load_or_train(digit_features.default_cache_dir(), reference["image"], reference["label"])
  n = num_samples or len(heldout["image"])
  n_heldout = min(n, len(heldout["image"]))  # short smoke runs score fewer samples
  results, samples = {}, {}
  # The end-of-run plans: 1 and 2 steps at the config's levels (no workdir: the report comes
  # before any search), or a denoiser's ODE solver.
  for name, plan in plans.step_plans(config, [1, 2]).items():
    samples[name] = exp.generate(params, plan, n, seed=seed)
    report = digit_features.quality_report(net, samples[name], reference["image"],
                                           heldout["image"][:n_heldout])
    results[name] = {**plans.describe_plan(plan, exp.plans_in_time), **report}
  return results, samples


def format_table(results: dict) -> str:
  first = next(iter(results.values()))
  lines = [f"{'':8s} {'Frechet (digit features)':>25s} {'classes':>8s} {'confidence':>11s}",
           f"{'real':8s} {first['frechet_real']:25.3f} {first['classes_covered_real']:8d} "
           f"{first['mean_confidence_real']:11.3f}"]
  for name, r in results.items():
    lines.append(f"{name:8s} {r['frechet']:25.3f} {r['classes_covered']:8d} "
                 f"{r['mean_confidence']:11.3f}")
  return "\n".join(lines)


def final_report(summary: dict) -> dict:
  """Scores the finished run (digits-like data only), writes JSON and a grid, prints paths."""
  exp, state, workdir, step = (summary["experiment"], summary["state"], summary["workdir"],
                               summary["step"])
  config = exp.config
  print(f"Checkpoint: {summary['checkpoint_dir']} (step {step})")
  if config.data.name != "digits":
    print(f"Sample grid: {summary.get('grid')}\nFor FID, sample with `python -m cm_jax.sample`.")
    return {}
  results, samples = score_digits(exp, state.ema_params, int(config.eval.num_samples))
  if jax.process_index() != 0:
    return results
  json_path = write_scores(workdir, step, config.method, results)
  # One block per plan, left to right (1-step, 2-step), the same seeds in each.
  n = min(50, len(next(iter(samples.values()))))
  blocks = [images.make_grid(samples[k][:n], ncols=5) for k in samples]
  gap = np.full((blocks[0].shape[0], 4, blocks[0].shape[2]), 255, np.uint8)
  joined = [b for block in blocks for b in (block, gap)][:-1]
  name = "_".join(k.replace("-", "") for k in samples)
  grid_path = storage.join(workdir, "samples", f"final_{name}_step{step:07d}.png")
  storage.makedirs(os.path.dirname(grid_path))
  images.save_png(grid_path, np.concatenate(joined, axis=1), scale=4)
  print(format_table(results))
  print(f"Samples (left to right: {', '.join(samples)}): {grid_path}\nScores: {json_path}")
  return results


def scores_path(workdir: str, step: int) -> str:
  return storage.join(workdir, "eval", f"digits_quality_step{step:07d}.json")


def write_scores(workdir: str, step: int, method: str, results: dict) -> str:
  path = scores_path(workdir, step)
  files.write_json_atomically(path, {"step": step, "method": method, **results})
  return path


def latest_scores(workdir: str) -> dict:
  """The newest digits_quality_step*.json of a workdir."""
  eval_dir = storage.join(workdir, "eval")
  names = sorted(n for n in storage.listdir(eval_dir) if n.startswith("digits_quality_step")) \
      if storage.isdir(eval_dir) else []
  if not names:
    raise MissingPath(f"No digits_quality_step*.json in {eval_dir}: train to the end first.")
  return json.loads(storage.read_text(storage.join(eval_dir, names[-1])))


def checkpoint_scores(workdir: str, step: int) -> dict:
  """The scores of checkpoint `step` of a (digits) workdir: cached in its eval/ as the end-of-run
  report writes them, else computed from that checkpoint's EMA weights (read-only restore)."""
  path = scores_path(workdir, step)
  if not storage.exists(path):
    config = restore.workdir_config(workdir)
    exp, state, _ = restore.restore_state(workdir, config, step)
    results, _ = score_digits(exp, state.ema_params, int(config.eval.num_samples))
    write_scores(workdir, step, config.method, results)
  return json.loads(storage.read_text(path))


def _teacher(workdir: str) -> str:
  path = storage.join(workdir, "config.json")
  teacher = ""
  if storage.exists(path):
    teacher = json.loads(storage.read_text(path)).get("teacher", "")
  return f"`{os.path.basename(os.path.normpath(teacher))}`" if teacher else "-"


def markdown_table(workdirs: list[str]) -> str:
  """One row per run: Frechet at 1 and 2 steps (consistency models) or with the ODE solver (EDM,
  TrigFlow), classes covered (by the first plan), beside real held-out digits.

  A run is a workdir (its newest scores) or `WORKDIR@STEP` (checkpoint STEP, scored on demand).
  The teacher column names the workdir a run distils or starts from (CD, ECT, sCD)."""
  rows = ["| run | method | steps | teacher | 1-step Frechet | 2-step Frechet | "
          "ODE solver Frechet (NFE) | real held-out | classes |",
          "|---|---|---|---|---|---|---|---|---|"]
  for run in workdirs:
    w, _, step = run.partition("@")
    if step and not step.isdigit():
      raise UserError(f"{run}: give WORKDIR or WORKDIR@STEP with a checkpoint step number.")
    s = checkpoint_scores(w, int(step)) if step else latest_scores(w)
    plans = {k: v for k, v in s.items() if isinstance(v, dict)}
    first = next(iter(plans.values()))
    cell = lambda k: f"{plans[k]['frechet']:.1f}" if k in plans else "-"
    ode = "; ".join(f"{v['frechet']:.1f} ({v['solver']}, {v['nfe']})"
                    for v in plans.values() if "solver" in v) or "-"
    rows.append(f"| `{run}` | {s['method']} | {s['step']} | {_teacher(w)} | {cell('1-step')} | "
                f"{cell('2-step')} | {ode} | {first['frechet_real']:.1f} | "
                f"{first['classes_covered']}/10 |")
  return "\n".join(rows)


def main(runs: list[str]) -> None:
  """The command. It defines no flags: the library imports this module, and absl flags are
  process-global."""
  if not runs:
    raise UserError("Give one or more runs: WORKDIR or WORKDIR@STEP (see --help).")
  print(markdown_table(runs))


if __name__ == "__main__":
  cli.run(main, takes_args=True)
