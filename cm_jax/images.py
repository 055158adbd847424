"""Image grids as PNG files."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from cm_jax import files
from cm_jax.errors import UserError


def read_image(path: str, mode: str) -> np.ndarray:
  """uint8 [H, W, C] of an image file converted to `mode` ('L', 'RGB'); an unreadable file is
  a UserError naming it."""
  try:
    with Image.open(path) as img:
      return np.asarray(img.convert(mode), np.uint8).reshape(img.height, img.width, -1)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(f"Cannot read image {path} ({type(e).__name__}: {e}); remove or replace "
                    "the file.") from None


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
