"""FID / IS of a training workdir's checkpoints, or of a sample file (SPEC §9).

  python -m cm_jax.evaluate --workdir=W --ref=STATS.npz --steps=1,2 --num_samples=50000
      [--checkpoints=latest|all|N,M] [--inception_weights=DIR] [--features=inception|digits]
  python -m cm_jax.evaluate --samples=S.npz --ref=REF.npz|--ref_samples=R.npz
      --inception_weights=DIR --json=OUT.json
  python -m cm_jax.evaluate --workdir=W --search_ts [--ts_grid=40] --ref=...   # 2-step level

--ref: an .npz of `mu`/`sigma` (pytorch-fid, ADM reference batches) or of `arr_0` images, or
`data:SPLIT` for a split of the workdir's dataset (default `data:train`, cached in W/eval).
Workdir mode samples on every device (sample i depends only on --seed and i), streams features
through the network, appends one JSON line per (checkpoint, sampling plan) to
W/eval/results.jsonl and prints the table in the paper's layout. Progress is saved as it goes:
rerunning an interrupted command resumes where it stopped, and finished rows are not recomputed.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import jax
import numpy as np
from absl import app, flags

from cm_jax import (checkpoint, cli, defaults, files, methods, parallel, progress, sampling,
                    storage)
from cm_jax.data import pipeline
from cm_jax.errors import UserError
from cm_jax.evaluation import digit_features, fid, inception, plans, two_step
from cm_jax.train import report, restore

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir to sample and evaluate.")
_SAMPLES = flags.DEFINE_string("samples", None, "Evaluate this .npz sample file (arr_0 uint8 "
                               "[N, H, W, C]) instead of a workdir.")
_REF = flags.DEFINE_string("ref", None, "Reference: .npz with mu/sigma or arr_0, or data:SPLIT "
                           "(workdir mode; default data:train).")
_REF_SAMPLES = flags.DEFINE_string("ref_samples", None, "Reference sample file (arr_0); same as "
                                   "--ref with an arr_0 file.")
_STEPS = flags.DEFINE_list("steps", ["1", "2"], "Sampling steps to evaluate: 1 = [sigma_max]; 2 = "
                           "[sigma_max, the searched or configured 2-step level]; k = the first k "
                           "of a Karras grid of k+1 levels. EDM workdirs: their ODE solver.")
_NUM = flags.DEFINE_integer("num_samples", 50000, "Samples per evaluation.")
_CHECKPOINTS = flags.DEFINE_string("checkpoints", "latest", "'latest', 'all' or steps N,M.")
_WEIGHTS = flags.DEFINE_string("inception_weights", None, "Converted FID Inception directory "
                               f"(made by: {inception.CONVERT_COMMAND}).")
_FEATURES = flags.DEFINE_enum("features", None, ["inception", "digits"], "Feature network. "
                              "Default: digits for the digits dataset, else inception.")
_JSON = flags.DEFINE_string("json", None, "Also write the result(s) to this JSON file.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Images per sampling / feature batch.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "online"], "Which weights to sample.")
_PR = flags.DEFINE_boolean("precision_recall", False, "Also improved precision/recall (k=3); "
                           "keeps the features (not the images) of both sets in memory.")
_SEARCH = flags.DEFINE_boolean("search_ts", False, "Ternary search of the 2-step intermediate "
                               "level (index into a Karras grid of --ts_grid levels) on FID; "
                               "writes W/eval/two_step_sigma.json, which sample/evaluate then use.")
_TS_GRID = flags.DEFINE_integer("ts_grid", 40, "Levels of the grid --search_ts searches.")
_SAVE_EVERY = flags.DEFINE_float("save_every_s", 60.0, "Seconds between progress saves.")
_STOP_AFTER = flags.DEFINE_integer("stop_after_batches", 0, "Stop (as if interrupted) after this "
                                   "many batches of one evaluation; for testing resumption.")


class Interrupted(Exception):
  pass


# ----------------------------------------------------------------------------- feature network

def digit_net():
  train = pipeline.load_split(defaults.base_config().data, "train")  # the default data: digits
  return fid.DigitNet(digit_features.load_or_train(report.feature_cache_dir(), train["image"],
                                                   train["label"]))


def feature_net(kind: str, weights: str | None, batch_size: int) -> fid.FeatureNet:
  if kind == "digits":
    return digit_net()
  return fid.load_inception_net(weights, batch_size)


def reference(spec: str | None, ref_samples: str | None, net, data_config=None,
              cache_dir: str | None = None, keep: bool = False) -> fid.Reference:
  if spec and ref_samples:
    raise UserError("Give --ref or --ref_samples, not both.")
  if ref_samples:
    return fid.reference_from_images(fid.load_sample_file(ref_samples, net.channels), net,
                                     ref_samples, _BATCH.value, keep)
  spec = spec or ("data:train" if data_config is not None else None)
  if not spec:
    raise UserError("Give the reference: --ref=STATS.npz (mu/sigma, or arr_0 images) or "
                    "--ref_samples=R.npz.")
  if spec.startswith("data:"):
    if data_config is None:
      raise UserError("--ref=data:SPLIT needs --workdir (the dataset is the workdir's).")
    return fid.reference_from_dataset(data_config, spec[5:], net, cache_dir, _BATCH.value, keep)
  return fid.load_reference(spec, net, _BATCH.value, keep)


def summarise(stats: fid.FeatureStats, ref: fid.Reference) -> dict:
  out = {"fid": fid.frechet_distance(stats.moments.mean(), stats.moments.cov(), ref.mu, ref.sigma,
                                     method="eigh"),
         "num_samples": int(stats.count)}
  try:
    out["is_mean"], out["is_std"] = stats.inception_score.result()
  except ValueError:  # fewer than 10 samples
    out["is_mean"] = out["is_std"] = float("nan")
  if stats.features is not None:
    if ref.features is None:
      raise UserError("--precision_recall needs reference features: give a reference of images "
                      "(--ref_samples, an arr_0 file or data:SPLIT), not only mu/sigma.")
    out["precision"], out["recall"] = fid.precision_recall(ref.features, stats.all_features())
  return out


# ----------------------------------------------------------------------------- sample-file mode

def evaluate_file(samples_path: str) -> dict:
  images = fid.load_sample_file(samples_path)  # a bad file fails before any network is built
  kind = _FEATURES.value or ("digits" if images.shape[-1] == 1 else "inception")
  net = feature_net(kind, _WEIGHTS.value, _BATCH.value)
  fid.check_images(images.head(1), net.channels)
  ref = reference(_REF.value, _REF_SAMPLES.value, net, keep=_PR.value)
  stats = fid.stream_stats(net, fid.iterate_batches(images, _BATCH.value), len(images), _PR.value)
  result = {**summarise(stats, ref), "samples": samples_path, "reference": ref.source,
            "features": net.name, "devices": jax.device_count()}
  print(f"FID {result['fid']:.4f}  IS {result['is_mean']:.3f} +- {result['is_std']:.3f}  "
        f"({result['num_samples']} samples, {net.name} features, reference {ref.source})")
  return result


# ----------------------------------------------------------------------------- workdir mode

def select_steps(available: list[int], spec: str, directory: str) -> list[int]:
  if not available:
    raise checkpoint.CheckpointError(f"No checkpoint in {directory}: train first.")
  if spec == "latest":
    return [max(available)]
  if spec == "all":
    return sorted(available)
  try:
    wanted = [int(s) for s in spec.split(",") if s.strip()]
  except ValueError:
    raise UserError(f"--checkpoints must be latest, all or steps like 1000,2000; got {spec!r}.")
  missing = [s for s in wanted if s not in available]
  if missing:
    raise checkpoint.CheckpointError(f"No checkpoint for step(s) {missing} in {directory}; "
                                     f"available: {sorted(available)}.")
  return wanted


def plans_for(exp, workdir: str, steps: list[str]) -> dict:
  return plans.step_plans(exp.config, exp.levels, steps, workdir)


def _key(step: int, plan, net, ref, num: int, in_time: bool = False) -> dict:
  return {"checkpoint_step": step, **plans.describe_plan(plan, in_time), "num_samples": num,
          "seed": _SEED.value,
          "features": net.name, "reference": ref.source, "params": _PARAMS.value}


def _key_id(key: dict) -> str:
  return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_results(eval_dir: str) -> list[dict]:
  path = storage.join(eval_dir, "results.jsonl")
  if not storage.isfile(path):
    return []
  rows = []
  for line in storage.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except ValueError:
      continue  # a line cut short by a kill
  return rows


def evaluate_plan(exp, params, step: int, plan, net, ref, eval_dir: str, num: int) -> dict:
  """FID/IS of `num` samples of one plan, resumable: returns the recorded row if done."""
  key = _key(step, plan, net, ref, num, exp.plans_in_time)
  kid = _key_id(key)
  for row in read_results(eval_dir):
    if row.get("key_id") == kid:
      print(f"  step {step} {plans.describe_plan(plan, exp.plans_in_time)}: already evaluated "
            f"(FID {row['fid']:.4f})")
      return row
  partial = storage.join(eval_dir, f"partial_{kid}.npz")
  stats = fid.FeatureStats(net.dim, net.num_logits, num, keep_features=_PR.value)
  start = 0
  if storage.isfile(partial):
    with files.open_npz(partial, "the partial statistics") as d:
      stats.restore(d)
      start = int(d["next"])
    print(f"  resuming at sample {start} of {num} from {partial}")
  batch = max(1, min(_BATCH.value, num))
  last_save, batches, t0 = time.time(), 0, time.time()
  bar = progress.bar(num, f"step {step} {plans.describe_plan(plan, exp.plans_in_time)}",
                     initial=start)

  def save():
    if jax.process_index() == 0:
      files.write_npz_atomically(partial, next=np.int64(start), **stats.state())

  while start < num:
    count = min(batch, num - start)
    images = exp.generate(params, plan, count, seed=_SEED.value, batch_size=batch,
                          first_index=start)
    if images.shape[-1] != net.channels:
      raise UserError(f"The model makes {images.shape[-1]}-channel images; the {net.name} "
                      f"features take {net.channels} (choose --features).")
    stats.update(*net(images))
    start += count
    batches += 1
    bar.update(count)
    if _STOP_AFTER.value and batches >= _STOP_AFTER.value and start < num:
      save()
      raise Interrupted(f"stopped after {batches} batches ({start} of {num} samples) as "
                        "--stop_after_batches asked; rerun to resume")
    if time.time() - last_save > _SAVE_EVERY.value and start < num:
      save()
      last_save = time.time()
  bar.close()
  row = {**key, **summarise(stats, ref), "key_id": kid, "devices": jax.device_count(),
         "seconds": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
  if jax.process_index() == 0:
    storage.append_text(storage.join(eval_dir, "results.jsonl"), json.dumps(row) + "\n")
    if storage.exists(partial):
      storage.remove(partial)
  return row


def format_table(rows: list[dict]) -> str:
  """The paper's layout: one row per checkpoint, one column per sampling plan, FID (IS)."""
  plans, by_step = [], {}
  for r in rows:
    name = f"{r['solver']} ({r['nfe']} NFE)" if "solver" in r else \
        f"{r['nfe']} step{'s' if r['nfe'] > 1 else ''}"
    if name not in plans:
      plans.append(name)
    by_step.setdefault(r["checkpoint_step"], {})[name] = r
  head = "| checkpoint | samples | " + " | ".join(f"{p} FID (IS)" for p in plans) + " |"
  lines = [head, "|" + "---|" * (len(plans) + 2)]
  for step in sorted(by_step):
    cells = by_step[step]
    num = next(iter(cells.values()))["num_samples"]
    vals = [f"{cells[p]['fid']:.2f} ({cells[p]['is_mean']:.2f})" if p in cells else "-"
            for p in plans]
    lines.append(f"| {step} | {num} | " + " | ".join(vals) + " |")
  return "\n".join(lines)


def evaluate_workdir(workdir: str) -> list[dict]:
  config = restore.workdir_config(workdir)
  if _SEARCH.value:
    check_searchable(config)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    available = ckpt.all_steps()
  finally:
    ckpt.close()
  steps = select_steps(available, _CHECKPOINTS.value,
                       storage.join(workdir, checkpoint.CHECKPOINT_DIR))
  if _NUM.value < 2:
    raise UserError("--num_samples must be at least 2 (a covariance needs two samples).")
  kind = _FEATURES.value or ("digits" if config.data.name == "digits" else "inception")
  net = feature_net(kind, _WEIGHTS.value, _BATCH.value)
  if net.channels != config.data.channels:
    raise UserError(f"{workdir} makes {config.data.channels}-channel images; the {net.name} "
                    f"features take {net.channels} (choose --features).")
  eval_dir = storage.join(workdir, "eval")
  storage.makedirs(eval_dir)
  ref = reference(_REF.value, _REF_SAMPLES.value, net, config.data, eval_dir, keep=_PR.value)
  rows = []
  for step in steps:
    exp, state, _ = restore.restore_state(workdir, config, step)
    params = state.ema_params if _PARAMS.value == "ema" else state.params
    if _SEARCH.value:
      rows += search_two_step(exp, params, step, net, ref, eval_dir, workdir)
      continue
    for name, plan in plans_for(exp, workdir, _STEPS.value).items():
      how = plans.describe_plan(plan, exp.plans_in_time)
      print(f"Checkpoint {step}, {name} {how}: {_NUM.value} samples")
      rows.append(evaluate_plan(exp, params, step, plan, net, ref, eval_dir, _NUM.value))
  print(format_table(rows))
  print(f"Results appended to {storage.join(eval_dir, 'results.jsonl')}")
  return rows


def check_searchable(config) -> None:
  """--search_ts searches a level in sigma: consistency models in sigma only."""
  spec = methods.spec(config.method)
  if spec.is_denoiser or spec.plans_in_time:
    raise UserError("--search_ts searches the sigma of a 2-step consistency model (SPEC §8); "
                    f"this workdir holds method={config.method}"
                    + (", sampled at times: sweep its 2-step time with "
                       "launch/two_step_sweep.py and set it in the config (two_step_t)."
                       if spec.plans_in_time and not spec.is_denoiser else "."))


def search_two_step(exp, params, step, net, ref, eval_dir, workdir) -> list[dict]:
  """Ternary search of the middle index t of ts = (0, t, grid-1) on FID (SPEC §8)."""
  grid = _TS_GRID.value
  if grid < 3:
    raise UserError(f"--ts_grid must be at least 3, got {grid}.")
  rows = {}

  def score(t):
    plan = [float(s) for s in sampling.sigmas_from_ts([0, t, grid - 1], grid, exp.levels)]
    print(f"Search: ts=0,{t},{grid - 1} of {grid} -> sigmas {plan}")
    rows[t] = evaluate_plan(exp, params, step, plan, net, ref, eval_dir, _NUM.value)
    return rows[t]["fid"]

  best, seen = two_step.ternary_search(score, 1, grid - 2)
  result = {"sigma": rows[best]["sigmas"][1], "ts": [0, best, grid - 1], "ts_grid": grid,
            "checkpoint_step": step, "fid": rows[best]["fid"], "num_samples": _NUM.value,
            "features": net.name, "reference": ref.source,
            "searched": {str(t): v for t, v in sorted(seen.items())}}
  if jax.process_index() == 0:
    path = two_step.save(workdir, result)
    print(f"Best 2-step level: ts=0,{best},{grid - 1} (sigma {result['sigma']:.4g}), FID "
          f"{result['fid']:.4f}; written to {path} (sample/evaluate --steps=2 use it)")
  return [rows[t] for t in sorted(rows)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  with cli.user_errors_exit():
    parallel.maybe_initialize_distributed()  # several processes: launch/train.sh --cli
    if bool(_WORKDIR.value) == bool(_SAMPLES.value):
      raise UserError("Give --workdir=W (sample and evaluate its checkpoints) or --samples=S.npz "
                      "(evaluate a sample file), not both or neither.")
    if _JSON.value:
      files.check_output_file(_JSON.value, "--json", ".json")
    try:
      if _SAMPLES.value:
        result = evaluate_file(_SAMPLES.value)
      else:
        result = evaluate_workdir(_WORKDIR.value)
    except Interrupted as e:
      print(f"interrupted: {e}", file=sys.stderr)
      sys.exit(3)
    if _JSON.value and jax.process_index() == 0:
      files.write_json_atomically(_JSON.value, result)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
