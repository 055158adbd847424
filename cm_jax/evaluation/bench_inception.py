"""Inception feature throughput (images/s) of the Flax network beside pytorch-fid's, same images.

  python -m cm_jax.evaluation.bench_inception [--weights=DIR] [--batch_size=16] [--batches=4]
      [--resolution=32] [--no_torch]

--weights: a converted Inception directory; without it, random weights (the throughput does not
depend on the values). pytorch-fid's model (needs torch, torchvision, pytorch-fid: the [test]
extra) runs with the same weights, on CPU, in the same process, after the Flax one. Both see
uint8 images of --resolution px resized to 299 inside the timed call; compile / first-call time
is reported apart from the steady-state rate.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from cm_jax.evaluation import fid, inception


def _random_params(seed: int = 0):
  rng = np.random.default_rng(seed)

  def draw(kp, leaf):
    name = jax.tree_util.keystr(kp)
    if name.endswith("['kernel']"):
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
              ).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name.endswith(("['scale']", "['var']")) else 0.0,
                   np.float32)

  return jax.tree_util.tree_map_with_path(draw, inception.param_template())


def _torch_state(params) -> dict:
  """Flax params -> pytorch-fid's state-dict layout (the converter's inverse)."""
  import torch
  out = {}
  names = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}

  def visit(prefix, tree):
    for k, v in tree.items():
      if isinstance(v, dict):
        visit(prefix + [k], v)
      elif prefix == ["fc"]:
        out[f"fc.{'weight' if k == 'kernel' else 'bias'}"] = (v.T if k == "kernel" else v)
      elif k == "kernel":
        out[".".join(prefix) + ".conv.weight"] = v.transpose(3, 2, 0, 1)
      else:
        out[".".join(prefix) + ".bn." + names[k]] = v
  visit([], params)
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}


def _torch_model(params):
  import torch
  from pytorch_fid import inception as pf
  state = _torch_state(params)
  original = pf.load_state_dict_from_url
  pf.load_state_dict_from_url = lambda *a, **k: state  # pytorch-fid would download its weights
  try:
    model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  finally:
    pf.load_state_dict_from_url = original
  return model, torch


def _rate(fn, batches) -> tuple[float, float]:
  t = time.perf_counter()
  fn(batches[0])
  first = time.perf_counter() - t
  t = time.perf_counter()
  for b in batches[1:]:
    fn(b)
  return first, (len(batches) - 1) * len(batches[0]) / (time.perf_counter() - t)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", default=None)
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--batches", type=int, default=4, help="timed batches (+1 warm-up)")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--no_torch", action="store_true")
  args = p.parse_args(argv)
  params = inception.load(args.weights) if args.weights else _random_params()
  rng = np.random.default_rng(0)
  r = args.resolution
  batches = [rng.integers(0, 256, (args.batch_size, r, r, 3), dtype=np.uint8)
             for _ in range(args.batches + 1)]
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); batch {args.batch_size}, "
        f"{r} px -> 299, {args.batches} timed batches")
  net = fid.InceptionNet(params, batch_size=args.batch_size)
  first, rate = _rate(net, batches)
  print(f"cm_jax (Flax/XLA):      {rate:7.2f} img/s   (first call incl. compile {first:.1f} s)")
  if args.no_torch:
    return
  model, torch = _torch_model(params)

  def run_torch(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
      return model(x)[0]

  first, trate = _rate(run_torch, batches)
  print(f"pytorch-fid (torch {torch.__version__}, {torch.get_num_threads()} threads): "
        f"{trate:7.2f} img/s   (first call {first:.1f} s)")
  print(f"ratio cm_jax / pytorch-fid: {rate / trate:.2f}x")


if __name__ == "__main__":
  main()
