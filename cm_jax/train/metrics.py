"""Metric writing: TensorBoard event files (tensorboardX, no TensorFlow), a metrics.jsonl of the
same scalars (one JSON object per logged step, readable without TensorBoard), and log lines.

clu's metric writers import TensorFlow; training here must not need it, so this keeps clu's
interface (write_scalars / write_images / write_hparams / flush) with a writer of its own.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Mapping, Optional

import jax
import numpy as np

from cm_jax import files, storage

log = logging.getLogger("cm_jax")


class MetricWriter:
  """Writes only on process 0; other processes get a no-op writer."""

  def __init__(self, logdir: str, jsonl_path: Optional[str] = None, start_step: int = 0):
    """jsonl_path: where the scalars also go, one line per write. A resumed run passes the step it
    resumed from: rows past it (logged after the last checkpoint of a stopped run, and logged
    again now) are dropped first, so each step has one row.

    On an object store (no append) both files are written in a local staging folder and
    uploaded whole after every write of scalars and at close."""
    self._tb = None
    self._jsonl = None
    self._active = jax.process_index() == 0
    self._uploads: list[tuple[str, str]] = []  # (staged local folder or file, remote target)
    if self._active:
      from tensorboardX import SummaryWriter
      if storage.is_remote(logdir):
        self._staging = tempfile.TemporaryDirectory(prefix="cm_jax-metrics-")
        staged_tb = os.path.join(self._staging.name, "tensorboard")
        self._uploads.append((staged_tb, logdir))
        logdir = staged_tb
        if jsonl_path:
          staged_jsonl = os.path.join(self._staging.name, os.path.basename(jsonl_path))
          if storage.exists(jsonl_path):
            storage.download(jsonl_path, staged_jsonl)
          self._uploads.append((staged_jsonl, jsonl_path))
          jsonl_path = staged_jsonl
      os.makedirs(logdir, exist_ok=True)
      self._tb = SummaryWriter(logdir)
      if jsonl_path:
        _keep_rows_up_to(jsonl_path, start_step)
        self._jsonl = open(jsonl_path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._active:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(k, float(v), step)
    if self._jsonl is not None:
      row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
      self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
      self._jsonl.flush()
    if self._uploads:
      self.flush()
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
      self._upload()

  def _upload(self) -> None:
    """A failed upload (a transient object-store error) is a warning, not the end of a long run:
    the staged files are whole, and the next logged step uploads them again."""
    try:
      for local, remote in self._uploads:
        if os.path.isdir(local):
          for name in os.listdir(local):
            storage.upload(os.path.join(local, name), storage.join(remote, name))
        else:
          storage.upload(local, remote)
    except OSError as e:
      log.warning("Could not upload the metrics to %s (%s: %s); retrying at the next log step.",
                  self._uploads[0][1], type(e).__name__, e)

  def close(self) -> None:
    if self._active:
      self._tb.close()
      if self._jsonl is not None:
        self._jsonl.close()
      self._upload()
      if self._uploads:
        self._staging.cleanup()


def _keep_rows_up_to(path: str, step: int) -> None:
  """Rewrites the file (atomically) without the rows past `step`; a torn last line (a killed
  writer) goes too."""
  if not os.path.exists(path):  # a local file: a remote one was staged first
    return
  kept, changed = [], False
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
        keep = line.endswith("\n") and int(row["step"]) <= step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line)
      else:
        changed = True
  if changed:
    files.write_atomically(path, "".join(kept).encode())
