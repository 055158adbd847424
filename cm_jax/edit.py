"""python -m cm_jax.edit --workdir=W --task=inpaint|colorize|superres|denoise|interpolate
                       --images=DIR_OR_NPZ --out=OUT.npz [--grid=G.png]
                       [--mask=center|left|strokes|MASK.png] [--factor=4]
                       [--sigmas=80,2.5 | --ts=0,11,17 --ts_grid=18] [--noise_sigma=0.5]

Zero-shot editing (CM Algorithm 4) with a trained workdir. Writes `arr_0`: uint8 [N, H, W, C],
the input's layout (interpolate: [pairs * num_alphas, H, W, C]), plus `arr_1` labels for a
class-conditional model, and a before/after PNG grid. A class-conditional model edits under the
images' own labels when the .npz holds them as `arr_1`, else under --labels (default: random).
The checkpoint, level, seed and label flags are the sample CLI's (--checkpoint --params --steps
--sigmas --ts --ts_grid --seed --batch_size --labels); edit i depends only on (--seed, i, the
levels), not on the batch size or device count.

--images: a directory of PNG/JPEG files (read as grayscale or RGB, as the model needs) or an .npz
with `arr_0` uint8 [N, H, W, C] (and optionally `arr_1` int labels [N]), at the model's
resolution (superres also takes images at resolution / factor). --mask: white (>= 128) in
MASK.png marks what to generate.
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import jax
import numpy as np
from absl import flags

from cm_jax import cli, edits, files, images, sampling, sampling_flags
from cm_jax.errors import UserError

log = logging.getLogger("cm_jax")

_TASK = flags.DEFINE_enum("task", None, edits.TASKS, "The edit.")
_IMAGES = flags.DEFINE_string("images", None, "A directory of PNG/JPEG images or an .npz (arr_0 "
                              "uint8 [N, H, W, C]). interpolate: pairs (0,1), (2,3), ...; without "
                              "--images it interpolates between pairs of noises.")
_MASK = flags.DEFINE_string("mask", "center", "inpaint: center | left | strokes (random per "
                            "image from --seed) | a PNG whose white pixels are generated.")
_FACTOR = flags.DEFINE_integer("factor", 4, "superres: patch size, 2, 4 or 8.")
_NOISE_SIGMA = flags.DEFINE_float("noise_sigma", None, "denoise: the noise level of the images "
                                  "(in [-1, 1] pixel units).")
_ADD_NOISE = flags.DEFINE_bool("add_noise", True, "denoise: add noise of --noise_sigma to the "
                               "images first (a demo); false: the images are already that noisy.")
_NUM_ALPHAS = flags.DEFINE_integer("num_alphas", 8, "interpolate: points per pair, ends included.")
_NUM_PAIRS = flags.DEFINE_integer("num_pairs", 4, "interpolate without --images: noise pairs.")
flags.mark_flag_as_required("task")
# Editing walks consistency levels in sigma: no TrigFlow/flow times, no ODE solver, no count.
CHECKPOINT = sampling_flags.define_checkpoint_flags()
PLAN = sampling_flags.define_plan_flags(times=False, ode=False)
DRAW = sampling_flags.define_draw_flags()
OUTPUT = sampling_flags.define_output_flags("edited images")
flags.adopt_module_key_flags(sampling_flags)  # --help lists the shared groups

# ---- input ------------------------------------------------------------------------------------

def stored_labels(path: Optional[str], count: int) -> Optional[np.ndarray]:
  """The int labels `arr_1` of an .npz of images, one per image; None when it has none."""
  if not path or not path.endswith(".npz"):
    return None
  with files.open_npz(path, "--images") as f:
    if "arr_1" not in f:
      return None
    labels = f["arr_1"]
  if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
    raise UserError(f"{path}: arr_1 (labels) must be {count} integers, one per image, got "
                    f"{labels.dtype} {labels.shape}; or pass --labels.")
  return labels



def grid_of(columns: Sequence[np.ndarray], ncols: int, limit: int = 32) -> np.ndarray:
  """Each image's columns side by side (each [N, H, W, C] or [N, k, H, W, C]), as many images
  per grid row as keep the grid roughly square."""
  tiles = [np.asarray(c)[:, None] if np.ndim(c) == 4 else np.asarray(c) for c in columns]
  rows = np.concatenate(tiles, axis=1)[:limit]  # [N, ncols, H, W, C]
  per_row = max(1, int(round(math.sqrt(len(rows) / ncols))))
  return images.make_grid(sampling.to_uint8(rows.reshape(-1, *rows.shape[2:])),
                          ncols=ncols * per_row)


def save_npz(path: str, **arrays) -> None:
  files.write_npz_atomically(path, **arrays)


def main() -> None:
  task = _TASK.value
  DRAW.check()
  OUTPUT.check()
  if _IMAGES.value is None and task != "interpolate":
    raise UserError(f"--task={task} needs --images.")
  if task == "denoise" and PLAN.given():
    raise UserError("--task=denoise evaluates f once at --noise_sigma; it takes no "
                    "--sigmas, --ts or --steps.")
  if task != "inpaint" and _MASK.present:
    raise UserError("--mask is for --task=inpaint only.")
  opts = edits.Options(mask=_MASK.value, factor=_FACTOR.value, noise_sigma=_NOISE_SIGMA.value,
                       add_noise=_ADD_NOISE.value, num_alphas=_NUM_ALPHAS.value)
  opts.check(task)
  model = CHECKPOINT.load()
  exp, workdir = model.experiment, model.workdir
  edits.check_model(exp, workdir)
  h, w, c = exp.sample_shape
  # The plan every sampling command resolves (a MeanFlow model edits in sigma, through its
  # sigma-time consistency function); 2 steps take the searched level as `sample` does.
  sigmas = None if task == "denoise" else PLAN.resolve(exp.config, workdir, in_sigma=True)
  if _IMAGES.value is not None:
    y = edits.to_float(edits.check_size(images.load_images(_IMAGES.value, c, "--images"), h, w,
                                        _FACTOR.value if task == "superres" else None))
  else:
    y = np.zeros((2 * _NUM_PAIRS.value, h, w, c), np.float32)
  count = len(y) // 2 if task == "interpolate" else len(y)
  wanted = DRAW.parsed_labels()
  if wanted is None and exp.num_classes and task != "interpolate":
    # A class-conditional model edits real images under their own labels when the archive
    # carries them (arr_1, as the sample CLI and ADM write it); else they are drawn at random.
    wanted = stored_labels(_IMAGES.value, count)
    if wanted is None:
      log.warning("%s is class-conditional and %s holds no labels (arr_1): labels are drawn "
                  "at random; pass --labels to condition the edit on the images' classes.",
                  workdir, _IMAGES.value)
  labels = exp.resolve_labels(wanted, count, seed=DRAW.seed.value)
  result = edits.run(exp, model.params, task, y, sigmas, labels, seed=DRAW.seed.value,
                     opts=opts, batch_size=DRAW.batch_size.value)
  columns, ncols = result.columns, result.num_columns
  if task == "interpolate" and _IMAGES.value is None:
    columns, ncols = columns[1:2], ncols - 2  # pairs of noises: only the paths
  if jax.process_index() == 0:
    out = sampling.to_uint8(result.edited)
    save_npz(OUTPUT.out.value, arr_0=out,
             **({} if result.labels is None else {"arr_1": result.labels}))
    what = f"at sigmas {sigmas}" if task != "denoise" else f"from sigma {_NOISE_SIGMA.value}"
    print(f"Wrote {len(out)} {task} results of checkpoint step {model.step} {what} to "
          f"{OUTPUT.out.value}")
    if OUTPUT.grid.value:
      images.save_png(OUTPUT.grid.value, grid_of(columns, ncols), scale=4)
      print(f"Grid: {OUTPUT.grid.value}")


if __name__ == "__main__":
  cli.run(main, distributed=True)  # several processes: launch/train.sh --cli
