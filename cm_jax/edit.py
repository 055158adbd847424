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
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cm_jax import cli, editing, files, images, parallel, sampling, sampling_flags, storage
from cm_jax.errors import MissingPath, UserError
from cm_jax.train.experiment import Experiment

log = logging.getLogger("cm_jax")

TASKS = ("inpaint", "colorize", "superres", "denoise", "interpolate")

_TASK = flags.DEFINE_enum("task", None, TASKS, "The edit.")
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
flags.adopt_module_key_flags(sampling_flags)  # --help lists the shared groups and --debug
flags.adopt_module_key_flags(cli)

# fold_in salt for the stroke masks' and added noise's keys; below the label stream's (sampling.py)
# and far above any sampling step's.
_AUX_STREAM = 2**31 - 2


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


def check_size(images_u8: np.ndarray, height: int, width: int, factor: Optional[int] = None
               ) -> np.ndarray:
  """The model's size; with a factor also 1/factor of it, upsampled by pixel repetition."""
  h, w = images_u8.shape[1:3]
  if (h, w) == (height, width):
    return images_u8
  if factor and (h * factor, w * factor) == (height, width):
    return np.repeat(np.repeat(images_u8, factor, axis=1), factor, axis=2)
  also = f" or {height // factor}x{width // factor}" if factor else ""
  raise UserError(f"Images are {h}x{w}; the model works at {height}x{width}{also}.")


def load_mask(spec: str, height: int, width: int) -> Optional[np.ndarray]:
  """[H, W, 1] float32 (1 = generate) for center/left/a PNG; None for strokes (drawn per image)."""
  if spec == "center":
    return editing.center_mask(height, width)
  if spec == "left":
    return editing.left_half_mask(height, width)
  if spec == "strokes":
    return None
  if not storage.isfile(spec):
    raise MissingPath(f"--mask must be center, left, strokes or a PNG file; {spec} is none.")
  mask = images.read_image(spec, "L")[..., 0]
  if mask.shape != (height, width):
    raise UserError(f"Mask {spec} is {mask.shape[0]}x{mask.shape[1]}; the images are "
                    f"{height}x{width}.")
  return (mask >= 128).astype(np.float32)[..., None]


def to_float(images_u8: np.ndarray) -> np.ndarray:
  return images_u8.astype(np.float32) / 127.5 - 1.0


# ---- running over devices ---------------------------------------------------------------------

def run_batched(exp: Experiment, fn: Callable, params, rows: Sequence[Optional[np.ndarray]],
                batch_size: int) -> np.ndarray:
  """fn(params, *row_batches) jitted and sharded over fixed, device-divisible batches of rows.

  Rows are independent (per-sample noise), so padding the last batch with copies of the last
  row and trimming changes nothing. Returns float32 [N, ...].
  """
  size = parallel.device_batch_size(batch_size, len(rows[0]), exp.mesh)
  run = parallel.over_rows(fn, exp.mesh, num_rows=len(rows))
  return parallel.map_in_batches(lambda *batch: run(params, *batch), rows, size,
                                 progress="editing")


# ---- tasks: each returns (edited [M, H, W, C] float, the grid's columns, their count) ---------

def _projection_task(exp: Experiment, params, task: str, y: np.ndarray, labels, sigmas, keys,
                     batch_size: int) -> tuple[np.ndarray, list, int]:
  """inpaint / colorize / superres: CM Algorithm 4 with the task's (A, Omega)."""
  n, h, w, c = y.shape
  edit_key, mask_key, _ = keys
  idx = np.arange(n, dtype=np.int32)
  if task == "inpaint":
    mask = load_mask(_MASK.value, h, w)  # [H, W, 1], or per image [N, H, W, 1] for strokes
    if mask is None:
      mask = np.asarray(editing.stroke_masks(mask_key, idx, h, w))
    op, omega = editing.inpainting(mask)
  elif task == "colorize":
    op, omega = editing.colorization(c)
  else:
    op, omega = editing.super_resolution(_FACTOR.value, h, w)
  coeffs = jax.eval_shape(op.forward, jax.ShapeDtypeStruct(y.shape, jnp.float32)).shape
  omega = np.broadcast_to(np.asarray(omega, np.float32), coeffs)  # per row, for sharding
  clip = bool(exp.config.sample.clip)

  def fn(params, y, omega, idx, labels):
    f = exp.consistency_fn(params, labels)
    return editing.edit(f, op, y, omega, edit_key, idx, sigmas, exp.levels, clip=clip)

  edited = run_batched(exp, fn, params, [y, omega, idx, labels], batch_size)
  degraded = np.asarray(editing.known_part(op, jnp.asarray(y), jnp.asarray(omega)))
  return edited, [y, degraded, edited], 3


def _denoise_task(exp: Experiment, params, y: np.ndarray, labels, keys, batch_size: int
                  ) -> tuple[np.ndarray, list, int]:
  """f(y + sigma z, sigma), or f(y, sigma) for images that are already noisy."""
  if _NOISE_SIGMA.value is None:
    raise UserError("--task=denoise needs --noise_sigma, the images' noise level.")
  sigma = float(sampling.check_sigmas([_NOISE_SIGMA.value], exp.levels)[0])
  idx = np.arange(len(y), dtype=np.int32)
  noisy = np.asarray(editing.add_noise(keys[2], idx, y, sigma)) if _ADD_NOISE.value else y
  clip = bool(exp.config.sample.clip)

  def fn(params, noisy, labels):
    return editing.denoise(exp.consistency_fn(params, labels), noisy, sigma, clip=clip)

  edited = run_batched(exp, fn, params, [noisy, labels], batch_size)
  return edited, [y, noisy, edited], 3


def _interpolate_task(exp: Experiment, params, y: np.ndarray, labels, sigmas, keys,
                      batch_size: int) -> tuple[np.ndarray, list, int]:
  """Pairs (0,1), (2,3), ... of images (or of zero images: pairs of noises), num_alphas each."""
  a = _NUM_ALPHAS.value
  if a < 2:
    raise UserError(f"--num_alphas must be at least 2, got {a}.")
  if len(y) % 2:
    raise UserError(f"--task=interpolate takes images in pairs; got {len(y)} images.")
  pairs = len(y) // 2
  pair = np.repeat(np.arange(pairs, dtype=np.int32), a)                 # [P*A]
  alphas = np.tile(np.linspace(0.0, 1.0, a, dtype=np.float32), pairs)  # [P*A]
  x1, x2 = y[0::2][pair], y[1::2][pair]
  rows_labels = None if labels is None else labels[pair]
  key, clip = keys[0], bool(exp.config.sample.clip)

  def fn(params, x1, x2, alphas, pair, labels):
    # Endpoint noises as the sampler draws samples 2k and 2k+1 at its first level.
    z = lambda i: sampling.per_sample_normal(jax.random.fold_in(key, 0), i, x1.shape[1:])
    f = exp.consistency_fn(params, labels)
    return editing.interpolate_images(f, x1, x2, z(2 * pair), z(2 * pair + 1), alphas, key,
                                      pair, sigmas, exp.levels, clip=clip)

  edited = run_batched(exp, fn, params, [x1, x2, alphas, pair, rows_labels], batch_size)
  path = edited.reshape(pairs, a, *y.shape[1:])  # [P, A, H, W, C]
  return edited, [y[0::2], path, y[1::2]], a + 2


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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cli.setup_logging()
  with cli.user_errors_exit():
    parallel.maybe_initialize_distributed()  # several processes: launch/train.sh --cli
    task = _TASK.value
    DRAW.check()
    OUTPUT.check()
    if _IMAGES.value is None and task != "interpolate":
      raise UserError(f"--task={task} needs --images.")
    if task == "denoise" and PLAN.given():
      raise UserError("--task=denoise evaluates f once at --noise_sigma; it takes no "
                      "--sigmas, --ts or --steps.")
    if task != "denoise" and _NOISE_SIGMA.value is not None:
      raise UserError("--noise_sigma is for --task=denoise only.")
    if task != "inpaint" and _MASK.present:
      raise UserError("--mask is for --task=inpaint only.")
    if task == "superres" and _FACTOR.value not in editing.SUPERRES_FACTORS:
      raise UserError(f"--factor must be one of {editing.SUPERRES_FACTORS}, got {_FACTOR.value}.")
    model = CHECKPOINT.load()
    exp, params, step, workdir = model.experiment, model.params, model.step, model.workdir
    if exp.is_denoiser or exp.is_trigflow:
      raise UserError(f"{workdir} holds a method={exp.config.method} model; editing (CM "
                      "Algorithm 4) needs a consistency function in sigma (method ct, ict, cd, "
                      "ect or meanflow).")
    h, w, c = exp.sample_shape
    # The plan every sampling command resolves (a MeanFlow model edits in sigma, through its
    # sigma-time consistency function); 2 steps take the searched level as `sample` does.
    sigmas = PLAN.resolve(exp.config, workdir, in_sigma=True)
    if _IMAGES.value is not None:
      y = to_float(check_size(images.load_images(_IMAGES.value, c, "--images"), h, w,
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
    # The edit's noise uses the sampler's key, so interpolation ends are the sample CLI's
    # samples 2k, 2k+1 of the same seed; masks and added noise get streams of their own.
    key = jax.random.PRNGKey(DRAW.seed.value)
    keys = (key, *jax.random.split(jax.random.fold_in(key, _AUX_STREAM)))  # edit, mask, noise

    if task == "denoise":
      edited, columns, ncols = _denoise_task(exp, params, y, labels, keys, DRAW.batch_size.value)
    elif task == "interpolate":
      edited, columns, ncols = _interpolate_task(exp, params, y, labels, sigmas, keys,
                                                 DRAW.batch_size.value)
      labels = None if labels is None else np.repeat(labels, _NUM_ALPHAS.value)
      if _IMAGES.value is None:
        columns = columns[1:2]
        ncols -= 2
    else:
      edited, columns, ncols = _projection_task(exp, params, task, y, labels, sigmas, keys,
                                                DRAW.batch_size.value)
    if jax.process_index() == 0:
      out = sampling.to_uint8(edited)
      save_npz(OUTPUT.out.value, arr_0=out, **({} if labels is None else {"arr_1": labels}))
      what = f"at sigmas {sigmas}" if task != "denoise" else f"from sigma {_NOISE_SIGMA.value}"
      print(f"Wrote {len(out)} {task} results of checkpoint step {step} {what} to {OUTPUT.out.value}")
      if OUTPUT.grid.value:
        images.save_png(OUTPUT.grid.value, grid_of(columns, ncols), scale=4)
        print(f"Grid: {OUTPUT.grid.value}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
