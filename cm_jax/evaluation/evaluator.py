"""FID / IS of a workdir's checkpoints or of a sample file, as library calls with explicit
arguments (`cm_jax.evaluate` is their command line).

Workdir evaluation samples on every device (sample i depends only on the seed and i), streams
features through the network, appends one row per (checkpoint, sampling plan) to
WORKDIR/eval/results.jsonl (cm_jax.evaluation.results) and saves partial statistics as it goes, so
an interrupted evaluation resumes where it stopped. Every process computes; process 0 writes.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import numpy as np

from cm_jax import checkpoint, defaults, files, methods, plans, progress, sampling, storage
from cm_jax.data import pipeline
from cm_jax.errors import UserError
from cm_jax.evaluation import digit_features, fid, results, two_step
from cm_jax.train import restore


class Interrupted(Exception):
  """Stopped on request (Options.stop_after_batches) with the partial statistics saved."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How samples are drawn and scored; part of every result row's key but the last two."""
  num_samples: int = 50000
  seed: int = 0
  batch_size: int = 256            # images per sampling / feature batch
  params: str = "ema"              # ema | online weights
  precision_recall: bool = False   # improved precision/recall (k=3): keeps features in memory
  save_every_s: float = 60.0       # seconds between saves of the partial statistics
  stop_after_batches: int = 0      # > 0: raise Interrupted after so many batches (tests resuming)


# ----------------------------------------------------------------------------- features, reference

def feature_net(kind: str, weights: Optional[str], batch_size: int) -> fid.FeatureNet:
  """`digits`: the project's digit classifier (trained once on the digits train split, cached);
  `inception`: the FID Inception-v3 from converted weights."""
  if kind == "digits":
    train = pipeline.load_split(defaults.base_config().data, "train")  # the default data: digits
    return fid.DigitNet(digit_features.load_or_train(digit_features.default_cache_dir(),
                                                     train["image"], train["label"]))
  return fid.load_inception_net(weights, batch_size)


def reference(ref: Optional[str], ref_samples: Optional[str], net: fid.FeatureNet,
              batch_size: int, data_config=None, cache_dir: Optional[str] = None,
              keep: bool = False) -> fid.Reference:
  """`ref`: an .npz of mu/sigma or of arr_0 images, or data:SPLIT of `data_config`'s dataset
  (the default when there is one); `ref_samples`: an arr_0 file. `keep`: keep its features."""
  if ref and ref_samples:
    raise UserError("Give --ref or --ref_samples, not both.")
  if ref_samples:
    return fid.reference_from_images(fid.load_sample_file(ref_samples, net.channels), net,
                                     ref_samples, batch_size, keep)
  ref = ref or ("data:train" if data_config is not None else None)
  if not ref:
    raise UserError("Give the reference: --ref=STATS.npz (mu/sigma, or arr_0 images) or "
                    "--ref_samples=R.npz.")
  if ref.startswith("data:"):
    if data_config is None:
      raise UserError("--ref=data:SPLIT needs --workdir (the dataset is the workdir's).")
    return fid.reference_from_dataset(data_config, ref[5:], net, cache_dir, batch_size, keep)
  return fid.load_reference(ref, net, batch_size, keep)


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


# ----------------------------------------------------------------------------- a sample file

def evaluate_file(samples: str, *, ref: Optional[str] = None, ref_samples: Optional[str] = None,
                  features: Optional[str] = None, inception_weights: Optional[str] = None,
                  opts: Options = Options()) -> dict:
  """FID / IS of an .npz of samples (arr_0 uint8 [N, H, W, C]) against a reference."""
  images = fid.load_sample_file(samples)  # a bad file fails before any network is built
  kind = features or ("digits" if images.shape[-1] == 1 else "inception")
  net = feature_net(kind, inception_weights, opts.batch_size)
  fid.check_images(images.head(1), net.channels)
  reference_ = reference(ref, ref_samples, net, opts.batch_size, keep=opts.precision_recall)
  stats = fid.stream_stats(net, fid.iterate_batches(images, opts.batch_size), len(images),
                           opts.precision_recall)
  result = {**summarise(stats, reference_), "samples": samples, "reference": reference_.source,
            "features": net.name, "devices": jax.device_count()}
  print(f"FID {result['fid']:.4f}  IS {result['is_mean']:.3f} +- {result['is_std']:.3f}  "
        f"({result['num_samples']} samples, {net.name} features, reference {reference_.source})")
  return result


# ----------------------------------------------------------------------------- a workdir

def select_steps(available: list[int], spec: str, directory: str) -> list[int]:
  """'latest', 'all' or steps N,M among the workdir's checkpoints."""
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


def evaluate_plan(exp, params, step: int, plan, net: fid.FeatureNet, ref: fid.Reference,
                  eval_dir: str, opts: Options) -> dict:
  """FID/IS of opts.num_samples samples of one plan, resumable: the recorded row if done."""
  num = opts.num_samples
  in_time = exp.plans_in_time
  key = results.row_key(step, plan, in_time, num, opts.seed, net.name, ref.source, opts.params)
  kid = results.key_id(key)
  done = results.find(eval_dir, kid)
  if done is not None:
    print(f"  step {step} {plans.describe_plan(plan, in_time)}: already evaluated "
          f"(FID {done['fid']:.4f})")
    return done
  partial = storage.join(eval_dir, f"partial_{kid}.npz")
  stats = fid.FeatureStats(net.dim, net.num_logits, num, keep_features=opts.precision_recall)
  start = 0
  if storage.isfile(partial):
    with files.open_npz(partial, "the partial statistics") as d:
      stats.restore(d)
      start = int(d["next"])
    print(f"  resuming at sample {start} of {num} from {partial}")
  batch = max(1, min(opts.batch_size, num))
  last_save, batches, t0 = time.time(), 0, time.time()
  bar = progress.bar(num, f"step {step} {plans.describe_plan(plan, in_time)}", initial=start)

  def save():
    if jax.process_index() == 0:
      files.write_npz_atomically(partial, next=np.int64(start), **stats.state())

  while start < num:
    count = min(batch, num - start)
    images = exp.generate(params, plan, count, seed=opts.seed, batch_size=batch,
                          first_index=start)
    if images.shape[-1] != net.channels:
      raise UserError(f"The model makes {images.shape[-1]}-channel images; the {net.name} "
                      f"features take {net.channels} (choose --features).")
    stats.update(*net(images))
    start += count
    batches += 1
    bar.update(count)
    if opts.stop_after_batches and batches >= opts.stop_after_batches and start < num:
      save()
      raise Interrupted(f"stopped after {batches} batches ({start} of {num} samples) as "
                        "--stop_after_batches asked; rerun to resume")
    if time.time() - last_save > opts.save_every_s and start < num:
      save()
      last_save = time.time()
  bar.close()
  row = {**key, **summarise(stats, ref), "key_id": kid, "devices": jax.device_count(),
         "seconds": round(time.time() - t0, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
  if jax.process_index() == 0:
    results.append(eval_dir, row)
    if storage.exists(partial):
      storage.remove(partial)
  return row


def check_searchable(config) -> None:
  """The 2-step search is over a level in sigma: consistency models in sigma only."""
  spec = methods.spec(config.method)
  if spec.is_denoiser or spec.plans_in_time:
    raise UserError("--search_ts searches the sigma of a 2-step consistency model; "
                    f"this workdir holds method={config.method}"
                    + (", sampled at times: sweep its 2-step time with "
                       "launch/two_step_sweep.py and set it in the config (two_step_t)."
                       if spec.plans_in_time and not spec.is_denoiser else "."))


def search_two_step(exp, params, step: int, net, ref, eval_dir: str, workdir: str, grid: int,
                    opts: Options) -> list[dict]:
  """Ternary search of the middle index t of ts = (0, t, grid-1) on FID (docs/maths.md §8); the best
  level is saved for every later 2-step plan of the workdir (cm_jax.plans)."""
  if grid < 3:
    raise UserError(f"--search_grid must be at least 3, got {grid}.")
  rows = {}

  def score(t):
    plan = [float(s) for s in sampling.sigmas_from_ts([0, t, grid - 1], grid, exp.levels)]
    print(f"Search: ts=0,{t},{grid - 1} of {grid} -> sigmas {plan}")
    rows[t] = evaluate_plan(exp, params, step, plan, net, ref, eval_dir, opts)
    return rows[t]["fid"]

  best, seen = two_step.ternary_search(score, 1, grid - 2)
  result = {"sigma": rows[best]["sigmas"][1], "ts": [0, best, grid - 1], "ts_grid": grid,
            "checkpoint_step": step, "fid": rows[best]["fid"], "num_samples": opts.num_samples,
            "features": net.name, "reference": ref.source,
            "searched": {str(t): v for t, v in sorted(seen.items())}}
  if jax.process_index() == 0:
    path = plans.save_search(workdir, result)
    print(f"Best 2-step level: ts=0,{best},{grid - 1} (sigma {result['sigma']:.4g}), FID "
          f"{result['fid']:.4f}; written to {path} (sample/evaluate --steps=2 use it)")
  return [rows[t] for t in sorted(rows)]


def evaluate_workdir(workdir: str, *, ref: Optional[str] = None,
                     ref_samples: Optional[str] = None, steps: Sequence[int | str] = (1, 2),
                     checkpoints: str = "latest", features: Optional[str] = None,
                     inception_weights: Optional[str] = None, search_grid: Optional[int] = None,
                     opts: Options = Options()) -> list[dict]:
  """Scores each chosen checkpoint ('latest', 'all' or 'N,M') at each k of `steps` (the plans of
  cm_jax.plans.step_plans; a denoiser: its ODE solver), or, with `search_grid`, searches the
  2-step level over a Karras grid of that many levels. Returns the result rows."""
  config = restore.workdir_config(workdir)
  if search_grid is not None:
    check_searchable(config)
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    available = ckpt.all_steps()
  finally:
    ckpt.close()
  chosen = select_steps(available, checkpoints, storage.join(workdir, checkpoint.CHECKPOINT_DIR))
  if opts.num_samples < 2:
    raise UserError("--num_samples must be at least 2 (a covariance needs two samples).")
  kind = features or ("digits" if config.data.name == "digits" else "inception")
  net = feature_net(kind, inception_weights, opts.batch_size)
  if net.channels != config.data.channels:
    raise UserError(f"{workdir} makes {config.data.channels}-channel images; the {net.name} "
                    f"features take {net.channels} (choose --features).")
  eval_dir = storage.join(workdir, "eval")
  storage.makedirs(eval_dir)
  reference_ = reference(ref, ref_samples, net, opts.batch_size, config.data, eval_dir,
                         keep=opts.precision_recall)
  rows = []
  for step in chosen:
    exp, state, _ = restore.restore_state(workdir, config, step)
    params = state.ema_params if opts.params == "ema" else state.params
    if search_grid is not None:
      rows += search_two_step(exp, params, step, net, reference_, eval_dir, workdir,
                              search_grid, opts)
      continue
    for name, plan in plans.step_plans(config, steps, workdir).items():
      how = plans.describe_plan(plan, exp.plans_in_time)
      print(f"Checkpoint {step}, {name} {how}: {opts.num_samples} samples")
      rows.append(evaluate_plan(exp, params, step, plan, net, reference_, eval_dir, opts))
  print(results.format_table(rows))
  print(f"Results appended to {storage.join(eval_dir, results.FILE)}")
  return rows
