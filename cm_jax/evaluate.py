"""FID / IS of a training workdir's checkpoints, or of a sample file (docs/maths.md §9).

  python -m cm_jax.evaluate --workdir=W --ref=STATS.npz --steps=1,2 --num_samples=50000
      [--checkpoints=latest|all|N,M] [--inception_weights=DIR] [--features=inception|digits]
  python -m cm_jax.evaluate --samples=S.npz --ref=REF.npz|--ref_samples=R.npz
      --inception_weights=DIR --json=OUT.json
  python -m cm_jax.evaluate --workdir=W --search_ts [--search_grid=40] --ref=...   # 2-step level

--ref: an .npz of `mu`/`sigma` (pytorch-fid, ADM reference batches) or of `arr_0` images, or
`data:SPLIT` for a split of the workdir's dataset (default `data:train`, cached in W/eval).
The work is cm_jax.evaluation.evaluator's (`evaluate_workdir`, `evaluate_file`, callable from
Python): workdir mode samples on every device (sample i depends only on --seed and i), streams
features through the network, appends one JSON line per (checkpoint, sampling plan) to
W/eval/results.jsonl and prints the table in the paper's layout. Progress is saved as it goes:
rerunning an interrupted command resumes where it stopped, and finished rows are not recomputed.
"""
from __future__ import annotations

import sys

import jax
from absl import flags

from cm_jax import cli, files
from cm_jax.errors import UserError
from cm_jax.evaluation import evaluator, inception

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
                               "level (index into a Karras grid of --search_grid levels) on "
                               "FID; "
                               "writes W/eval/two_step_sigma.json, which sample/evaluate then use.")
_SEARCH_GRID = flags.DEFINE_integer("search_grid", 40, "Levels of the Karras grid --search_ts "
                                    "searches (the release's --ts_grid of that search).")
_SAVE_EVERY = flags.DEFINE_float("save_every_s", 60.0, "Seconds between progress saves.")
_STOP_AFTER = flags.DEFINE_integer("stop_after_batches", 0, "Stop (as if interrupted) after this "
                                   "many batches of one evaluation; for testing resumption.")


def main() -> None:
  if bool(_WORKDIR.value) == bool(_SAMPLES.value):
    raise UserError("Give --workdir=W (sample and evaluate its checkpoints) or --samples=S.npz "
                    "(evaluate a sample file), not both or neither.")
  if _JSON.value:
    files.check_output_file(_JSON.value, "--json", ".json")
  opts = evaluator.Options(num_samples=_NUM.value, seed=_SEED.value, batch_size=_BATCH.value,
                           params=_PARAMS.value, precision_recall=_PR.value,
                           save_every_s=_SAVE_EVERY.value,
                           stop_after_batches=_STOP_AFTER.value)
  scoring = dict(ref=_REF.value, ref_samples=_REF_SAMPLES.value, features=_FEATURES.value,
                 inception_weights=_WEIGHTS.value, opts=opts)
  try:
    if _SAMPLES.value:
      result = evaluator.evaluate_file(_SAMPLES.value, **scoring)
    else:
      result = evaluator.evaluate_workdir(
          _WORKDIR.value, steps=_STEPS.value, checkpoints=_CHECKPOINTS.value,
          search_grid=_SEARCH_GRID.value if _SEARCH.value else None, **scoring)
  except evaluator.Interrupted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(3)
  if _JSON.value and jax.process_index() == 0:
    files.write_json_atomically(_JSON.value, result)


if __name__ == "__main__":
  cli.run(main, distributed=True)  # several processes: launch/train.sh --cli
