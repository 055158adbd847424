"""Full-size stand-ins for the released files, with random weights in the released layouts, for
timing the importers where the real files cannot be downloaded:

  python -m tests.helpers.fake_release --layout=imagenet64 --out=/tmp/rel/cd_imagenet64_l2.pt
  python -m tests.helpers.fake_release --layout=lsun256 --out=/tmp/rel/ct_bedroom256.pt
  python -m tests.helpers.fake_release --layout=cifar10 --out=/tmp/rel/cd-lpips/checkpoints/checkpoint_80
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from tests.helpers import adm_layout, jcm_layout


def _random_tree(shapes, rng):
  return {k: _random_tree(v, rng) if isinstance(v, dict) else
          ((1.0 if k == "scale" else 0.0) + 0.05 * rng.standard_normal(v)).astype(np.float32)
          for k, v in shapes.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layout", required=True, choices=("imagenet64", "lsun256", "cifar10"))
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  if args.layout == "cifar10":
    import flax.serialization
    from cm_jax.convert import jcm_ncsnpp
    rng = np.random.default_rng(0)
    shapes = jcm_layout.ncsnpp_shapes()
    online, ema, target = (_random_tree(shapes, rng) for _ in range(3))
    state = jcm_ncsnpp.release_state(online, ema_params=ema, target_params=target, step=800000)
    with open(args.out, "wb") as f:
      f.write(flax.serialization.msgpack_serialize(state))
  else:
    import torch
    layout = adm_layout.IMAGENET64 if args.layout == "imagenet64" else adm_layout.LSUN256
    state = adm_layout.random_state(adm_layout.unet_shapes(**layout))
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, args.out)
  print(f"Wrote {args.out} ({os.path.getsize(args.out) / 2**20:.0f} MiB)")


if __name__ == "__main__":
  main()
