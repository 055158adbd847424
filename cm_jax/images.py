"""Reading images (files, folders, .npz; local or gs://) and writing grids as PNG files."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from cm_jax import files, storage
from cm_jax.errors import MissingPath, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: str, mode: str) -> np.ndarray:
  """uint8 [H, W, C] of an image file converted to `mode` ('L', 'RGB'); an unreadable file is
  a UserError naming it."""
  try:
    with storage.open_read(path) as f, Image.open(f) as img:
      return np.asarray(img.convert(mode), np.uint8).reshape(img.height, img.width, -1)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"Cannot read image {path} ({type(e).__name__}: {e}); remove or replace "
                    "the file.") from None


def load_images(path: str, channels: int, flag: str = "images") -> np.ndarray:
  """uint8 [N, H, W, C] from an .npz (arr_0) or a directory of image files (sorted by name),
  local or on gs://; `flag` names the input in errors."""
  if path.endswith(".npz"):
    with files.open_npz(path, flag) as f:
      if "arr_0" not in f:
        raise UserError(f"{path} has no arr_0 (keys: {', '.join(f.files)}).")
      arr = f["arr_0"]
    if arr.dtype != np.uint8 or arr.ndim != 4:
      raise UserError(f"{path}: arr_0 must be uint8 [N, H, W, C], got {arr.dtype} {arr.shape}.")
    if arr.shape[-1] != channels:
      raise UserError(f"{path}: images have {arr.shape[-1]} channels; the model needs {channels}.")
    return arr
  if not storage.isdir(path):
    raise MissingPath(f"{flag} {path} is neither a directory nor an .npz file.")
  names = sorted(n for n in storage.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
  if not names:
    raise UserError(f"{flag} {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
  mode = {1: "L", 3: "RGB"}.get(channels)
  if mode is None:
    raise UserError(f"Image files need a 1- or 3-channel model; this one has {channels}.")
  arrays = [read_image(storage.join(path, name), mode) for name in names]
  shapes = {a.shape for a in arrays}
  if len(shapes) > 1:
    raise UserError(f"Images in {path} differ in size: {sorted(shapes)}.")
  return np.stack(arrays)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] mosaic."""
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return grid


def save_png(path: str, grid: np.ndarray, scale: int = 1) -> None:
  """Writes atomically (temp file then rename), upscaling small images with nearest neighbours."""
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  buffer = io.BytesIO()
  img.save(buffer, format="PNG")
  files.write_atomically(path, buffer.getvalue())
