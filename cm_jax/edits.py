"""Zero-shot editing tasks (CM Algorithm 4) run with a trained model, as library calls:
`cm_jax.edit` is their command line and `cm_jax.load(...).edit(...)` their Python form.

Edit i depends only on (seed, i, the levels, label i), not on the batch size or the device
count: the edit's noise uses the sampler's key (interpolation ends are the sampler's samples 2k
and 2k+1 of the same seed); stroke masks and added noise get streams of their own.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import editing, images, parallel, sampling, storage
from cm_jax.errors import MissingPath, UserError
from cm_jax.train.experiment import Experiment

TASKS = ("inpaint", "colorize", "superres", "denoise", "interpolate")

# fold_in salt for the stroke masks' and added noise's keys; below the label stream's (sampling.py)
# and far above any sampling step's.
_AUX_STREAM = 2**31 - 2


@dataclasses.dataclass(frozen=True)
class Options:
  """What a task reads besides the images, the levels and the labels."""
  mask: str = "center"                # inpaint: center | left | strokes | a PNG (white = generate)
  factor: int = 4                     # superres: patch size, one of editing.SUPERRES_FACTORS
  noise_sigma: Optional[float] = None  # denoise: the images' noise level
  add_noise: bool = True              # denoise: add that noise first (a demo)
  num_alphas: int = 8                 # interpolate: points per pair, ends included

  def check(self, task: str) -> None:
    """Options that do not belong to the task are mistakes, not silently ignored."""
    if task not in TASKS:
      raise UserError(f"--task must be one of {', '.join(TASKS)}, got {task!r}.")
    if task != "denoise" and self.noise_sigma is not None:
      raise UserError("--noise_sigma is for --task=denoise only.")
    if task == "denoise" and self.noise_sigma is None:
      raise UserError("--task=denoise needs --noise_sigma, the images' noise level.")
    if task != "inpaint" and self.mask != "center":
      raise UserError("--mask is for --task=inpaint only.")
    if task == "superres" and self.factor not in editing.SUPERRES_FACTORS:
      raise UserError(f"--factor must be one of {editing.SUPERRES_FACTORS}, got {self.factor}.")
    if task == "interpolate" and self.num_alphas < 2:
      raise UserError(f"--num_alphas must be at least 2, got {self.num_alphas}.")


@dataclasses.dataclass
class Result:
  edited: np.ndarray                # float32 [M, H, W, C] in [-1, 1]
  labels: Optional[np.ndarray]      # int32 [M] of a class-conditional model
  columns: list                     # the before/after grid's columns ([N, ...] or [N, k, ...])
  num_columns: int


# ---- input ------------------------------------------------------------------------------------

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


def check_model(exp: Experiment, where: str) -> None:
  if exp.is_denoiser or exp.is_trigflow:
    raise UserError(f"{where} holds a method={exp.config.method} model; editing (CM "
                    "Algorithm 4) needs a consistency function in sigma (method ct, ict, cd, "
                    "ect or meanflow).")


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

def _projection(exp: Experiment, params, task: str, y: np.ndarray, labels, sigmas, keys,
                opts: Options, batch_size: int) -> tuple[np.ndarray, list, int]:
  """inpaint / colorize / superres: CM Algorithm 4 with the task's (A, Omega)."""
  n, h, w, c = y.shape
  edit_key, mask_key, _ = keys
  idx = np.arange(n, dtype=np.int32)
  if task == "inpaint":
    mask = load_mask(opts.mask, h, w)  # [H, W, 1], or per image [N, H, W, 1] for strokes
    if mask is None:
      mask = np.asarray(editing.stroke_masks(mask_key, idx, h, w))
    op, omega = editing.inpainting(mask)
  elif task == "colorize":
    op, omega = editing.colorization(c)
  else:
    op, omega = editing.super_resolution(opts.factor, h, w)
  coeffs = jax.eval_shape(op.forward, jax.ShapeDtypeStruct(y.shape, jnp.float32)).shape
  omega = np.broadcast_to(np.asarray(omega, np.float32), coeffs)  # per row, for sharding
  clip = bool(exp.config.sample.clip)

  def fn(params, y, omega, idx, labels):
    f = exp.consistency_fn(params, labels)
    return editing.edit(f, op, y, omega, edit_key, idx, sigmas, exp.levels, clip=clip)

  edited = run_batched(exp, fn, params, [y, omega, idx, labels], batch_size)
  degraded = np.asarray(editing.known_part(op, jnp.asarray(y), jnp.asarray(omega)))
  return edited, [y, degraded, edited], 3


def _denoise(exp: Experiment, params, y: np.ndarray, labels, keys, opts: Options,
             batch_size: int) -> tuple[np.ndarray, list, int]:
  """f(y + sigma z, sigma), or f(y, sigma) for images that are already noisy."""
  sigma = float(sampling.check_sigmas([opts.noise_sigma], exp.levels)[0])
  idx = np.arange(len(y), dtype=np.int32)
  noisy = np.asarray(editing.add_noise(keys[2], idx, y, sigma)) if opts.add_noise else y
  clip = bool(exp.config.sample.clip)

  def fn(params, noisy, labels):
    return editing.denoise(exp.consistency_fn(params, labels), noisy, sigma, clip=clip)

  edited = run_batched(exp, fn, params, [noisy, labels], batch_size)
  return edited, [y, noisy, edited], 3


def _interpolate(exp: Experiment, params, y: np.ndarray, labels, sigmas, keys, opts: Options,
                 batch_size: int) -> tuple[np.ndarray, list, int]:
  """Pairs (0,1), (2,3), ... of images (or of zero images: pairs of noises), num_alphas each."""
  a = opts.num_alphas
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


def run(exp: Experiment, params, task: str, y: np.ndarray, sigmas: Optional[Sequence[float]],
        labels: Optional[np.ndarray], seed: int = 0, opts: Options = Options(),
        batch_size: int = 256) -> Result:
  """One task on float images y [N, H, W, C] in [-1, 1] (interpolate: pairs), at the consistency
  levels `sigmas` (from cm_jax.plans.resolve(..., in_sigma=True); denoise takes none: it
  evaluates f once at opts.noise_sigma), under `labels` [N] (pairs: [N / 2]) of a
  class-conditional model."""
  opts.check(task)
  if (sigmas is None) != (task == "denoise"):
    raise ValueError(f"task {task!r} with sigmas={sigmas}: only denoise takes no levels")
  if tuple(y.shape[1:]) != tuple(exp.sample_shape):
    raise UserError(f"Images must be [N, {', '.join(map(str, exp.sample_shape))}], "
                    f"got {list(y.shape)}.")
  key = jax.random.PRNGKey(seed)
  keys = (key, *jax.random.split(jax.random.fold_in(key, _AUX_STREAM)))  # edit, mask, noise
  if task == "denoise":
    edited, columns, ncols = _denoise(exp, params, y, labels, keys, opts, batch_size)
  elif task == "interpolate":
    edited, columns, ncols = _interpolate(exp, params, y, labels, sigmas, keys, opts, batch_size)
    labels = None if labels is None else np.repeat(labels, opts.num_alphas)
  else:
    edited, columns, ncols = _projection(exp, params, task, y, labels, sigmas, keys, opts,
                                         batch_size)
  return Result(edited=edited, labels=labels, columns=columns, num_columns=ncols)
