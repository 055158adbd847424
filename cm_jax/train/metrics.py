"""Metric writing: TensorBoard event files (tensorboardX, no TensorFlow) and log lines.

clu's metric writers import TensorFlow; training here must not need it, so this keeps clu's
interface (write_scalars / write_images / write_hparams / flush) with a writer of its own.
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

import jax
import numpy as np

log = logging.getLogger("cm_jax")


class MetricWriter:
  """Writes only on process 0; other processes get a no-op writer."""

  def __init__(self, logdir: str):
    self._tb = None
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)
    log.info("[%d] %s", step, ", ".join(f"{k}={float(v):.5g}" for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """images: name -> uint8 [H, W, C]."""
    if self._active:
      for k, v in images.items():
        self._tb.add_image(k, np.asarray(v), step, dataformats="HWC")

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    if self._active:
      flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
              for k, v in hparams.items()}
      self._tb.add_text("hparams", "\n".join(f"{k} = {v}  " for k, v in sorted(flat.items())), 0)

  def flush(self) -> None:
    if self._active:
      self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._tb.close()
