"""Converted weights on disk: DIR/params.msgpack (flax.serialization) + DIR/meta.json.

The meta names what the checkpoint holds (`kind`), so handing the Inception directory to LPIPS
(or the reverse) is a clear error, not a shape mismatch deep inside a network.
"""
from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import jax
import numpy as np

from cm_jax import files, storage
from cm_jax.errors import MissingPath, UserError

PARAMS_FILE = "params.msgpack"
META_FILE = "meta.json"


def save(dst: str, params: Any, meta: dict) -> None:
  os.makedirs(dst, exist_ok=True)
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  files.write_atomically(os.path.join(dst, PARAMS_FILE),
                         flax.serialization.msgpack_serialize(params))
  files.write_atomically(os.path.join(dst, META_FILE), json.dumps(meta, indent=2).encode())


def load(path: str, kind: str, template: Any, command: str) -> tuple[Any, dict]:
  """(params shaped as `template`, meta) from a directory written by `save`.

  command: the converter command that makes such a directory, quoted in every error.
  """
  params_path, meta_path = storage.join(path, PARAMS_FILE), storage.join(path, META_FILE)
  if not storage.isfile(params_path) or not storage.isfile(meta_path):
    raise MissingPath(
        f"No converted {kind} weights in {path!r} (expected {PARAMS_FILE} and {META_FILE}). "
        f"Convert them once with: {command}")
  meta = json.loads(storage.read_text(meta_path))
  if meta.get("kind") != kind:
    raise UserError(f"{path!r} holds {meta.get('kind')!r} weights, not {kind!r}. Convert the "
                    f"right file with: {command}")
  raw = flax.serialization.msgpack_restore(storage.read_bytes(params_path))
  flat_raw = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(raw)}
  flat_want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(template)}
  if set(flat_raw) != set(flat_want):
    missing, extra = sorted(set(flat_want) - set(flat_raw)), sorted(set(flat_raw) - set(flat_want))
    raise UserError(f"{params_path} does not match the {kind} network (missing {missing[:5]}, "
                    f"unexpected {extra[:5]}). Re-convert with: {command}")
  for k, want in flat_want.items():
    if tuple(np.shape(flat_raw[k])) != tuple(want.shape):
      raise UserError(f"{params_path}: {k} has shape {np.shape(flat_raw[k])}, the network needs "
                      f"{tuple(want.shape)}. Re-convert with: {command}")
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), raw)
  return params, meta
