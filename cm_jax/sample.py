"""python -m cm_jax.sample --workdir=W --steps=1 [--sigmas=80,2.5 | --ts=0,11,17 --ts_grid=18]
                         --num_samples=N --out=S.npz [--grid=G.png] [--checkpoint=latest|STEP]

Writes `arr_0`: uint8 [N, H, W, C] (the layout FID tools exchange). Sample i depends only on
(--seed, i, the levels), not on the batch size or the device count.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags

from cm_jax import checkpoint, cli, images, karras
from cm_jax.train.experiment import Experiment

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampling steps (network evaluations). Default: the "
                              "number of --sigmas, else 1.")
_SIGMAS = flags.DEFINE_list("sigmas", None, "Decreasing noise levels, the first usually "
                            "sigma_max (80). Default: 1 step -> [80]; 2 steps -> [80, "
                            "config.sample.two_step_sigma]; k steps -> the first k of a descending "
                            "Karras grid of k+1 levels.")
_TS = flags.DEFINE_list("ts", None, "Released convention: indices into a descending Karras grid "
                        "of --ts_grid levels, e.g. 0,11,17 of 18; the last index is the end "
                        "(sigma_min) and is not evaluated.")
_TS_GRID = flags.DEFINE_integer("ts_grid", 18, "Levels of the grid --ts indexes.")
_NUM = flags.DEFINE_integer("num_samples", 64, "How many samples.")
_OUT = flags.DEFINE_string("out", None, "Output .npz path.")
_GRID = flags.DEFINE_string("grid", None, "Also write a PNG grid of (up to 256 of) the samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Samples per jitted call (memory only).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "'latest' or a checkpoint step.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "online"], "Which weights to sample.")
flags.mark_flags_as_required(["workdir", "out"])


def resolve_sigmas(levels: karras.NoiseLevels, steps, sigmas, ts, ts_grid, two_step_sigma):
  """The decreasing levels the sampler evaluates the consistency function at."""
  if sigmas and ts:
    raise ValueError("Give --sigmas or --ts, not both.")
  if ts:
    idx = [int(t) for t in ts]
    # The last index of the released ts lists is the end of the trajectory: evaluate all but it.
    out = karras.ts_to_sigmas(idx[:-1] if len(idx) > 1 else idx, ts_grid, levels)
  elif sigmas:
    out = np.asarray([float(s) for s in sigmas])
  else:
    steps = steps or 1
    if steps == 1:
      out = np.asarray([levels.sigma_max])
    elif steps == 2:
      out = np.asarray([levels.sigma_max, two_step_sigma])
    else:
      out = karras.karras_sigmas(steps + 1, levels)[::-1][:steps]
  if steps is not None and len(out) != steps:
    raise ValueError(f"--steps={steps} but {len(out)} levels were given: {list(out)}.")
  return [float(s) for s in out]


def load_params(workdir: str, which: str = "ema", step: str = "latest"):
  """(experiment, params, step) restored from a workdir; clear errors for missing/bad ones."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist.")
  config = checkpoint.load_config(workdir)
  exp = Experiment.from_config(config)
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  if ckpt.latest_step() is None:
    raise checkpoint.CheckpointError(f"{workdir} holds no checkpoint yet ({ckpt.directory}).")
  if step == "latest":
    chosen = None
  elif step.isdigit():
    chosen = int(step)
  else:
    raise ValueError(f"--checkpoint must be 'latest' or a step number, got {step!r}.")
  state, _ = ckpt.restore(exp.abstract_state(), chosen)
  ckpt.close()
  return exp, (state.ema_params if which == "ema" else state.params), int(state.step)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  with cli.user_errors_exit():
    if _NUM.value < 1:
      raise ValueError("--num_samples must be at least 1.")
    if not _OUT.value.endswith(".npz"):
      raise ValueError(f"--out must name a .npz file, got {_OUT.value!r}.")
    exp, params, step = load_params(_WORKDIR.value, _PARAMS.value, _CHECKPOINT.value)
    sigmas = resolve_sigmas(exp.levels, _STEPS.value, _SIGMAS.value, _TS.value, _TS_GRID.value,
                            float(exp.config.sample.two_step_sigma))
    samples = exp.generate(params, sigmas, _NUM.value, seed=_SEED.value,
                           batch_size=_BATCH.value)
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
      tmp = _OUT.value[:-4] + ".tmp.npz"
      np.savez(tmp, arr_0=samples)
      os.replace(tmp, _OUT.value)
      print(f"Wrote {len(samples)} samples of checkpoint step {step} at sigmas {sigmas} "
            f"to {_OUT.value}")
      if _GRID.value:
        images.save_png(_GRID.value, images.make_grid(samples[:256]), scale=4)
        print(f"Grid: {_GRID.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
