"""Inception feature throughput (images/s) of the Flax network beside pytorch-fid's, same images.

  python -m cm_jax.evaluation.bench_inception [--inception_weights=DIR] [--batch_size=16]
      [--batches=4] [--resolution=32] [--notorch]

--inception_weights: a converted Inception directory; without it, random weights (the throughput
does not depend on the values). pytorch-fid's model (needs torch, torchvision, pytorch-fid: the
[test] extra) runs with the same weights, on CPU, in the same process, after the Flax one. Both
see uint8 images of --resolution px resized to 299 inside the timed call; compile / first-call
time is reported apart from the steady-state rate.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from absl import flags

from cm_jax.errors import MissingDependency
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
  try:
    import torch
    from pytorch_fid import inception as pf
  except ImportError as e:
    raise MissingDependency(f"Timing pytorch-fid needs torch, torchvision and pytorch-fid (pip "
                            f"install 'cm_jax[test]'; {e}); --notorch times cm_jax alone.") from e
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


def main() -> None:
  _bench(flags.FLAGS)


def _bench(args) -> None:
  params = (inception.load(args.inception_weights) if args.inception_weights
            else _random_params())
  rng = np.random.default_rng(0)
  r = args.resolution
  batches = [rng.integers(0, 256, (args.batch_size, r, r, 3), dtype=np.uint8)
             for _ in range(args.batches + 1)]
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); batch {args.batch_size}, "
        f"{r} px -> 299, {args.batches} timed batches")
  net = fid.InceptionNet(params, batch_size=args.batch_size)
  first, rate = _rate(net, batches)
  print(f"cm_jax (Flax/XLA):      {rate:7.2f} img/s   (first call incl. compile {first:.1f} s)")
  if not args.torch:
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
  # The flags exist only when this module is the command: launch/bench_gpu.sh imports it beside
  # cm_jax.bench, whose --batch_size would clash (absl flags are process-global).
  from cm_jax import cli
  flags.DEFINE_string("inception_weights", None, "A converted FID Inception directory (python -m "
                      "cm_jax.convert inception). Default: random weights; the rate does not "
                      "depend on the values.")
  flags.DEFINE_integer("batch_size", 16, "Images per feature batch.", lower_bound=1)
  flags.DEFINE_integer("batches", 4, "Timed batches, after one warm-up batch.", lower_bound=1)
  flags.DEFINE_integer("resolution", 32, "Side of the random uint8 images, resized to 299 inside "
                       "the timed call.", lower_bound=1)
  flags.DEFINE_bool("torch", True, "Also time pytorch-fid's model on the CPU (needs the [test] "
                    "extra); --notorch times the Flax network only.")
  cli.run(main)
