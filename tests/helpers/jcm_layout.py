"""The parameter names and shapes of the JAX CIFAR-10 release's NCSN++ (score_sde's, in the
configuration of its CM runs: BigGAN blocks, progressive_input 'residual', progressive 'none',
Fourier features, no classes), written out from that code's construction order and Flax's
auto-naming, independently of the importer's mapping."""
from __future__ import annotations

import numpy as np


def _res(cin, cout, emb, resample):
  out = {"GroupNorm_0": {"scale": (cin,), "bias": (cin,)},
         "Conv_0": {"kernel": (3, 3, cin, cout), "bias": (cout,)},
         "Dense_0": {"kernel": (emb, cout), "bias": (cout,)},
         "GroupNorm_1": {"scale": (cout,), "bias": (cout,)},
         "Conv_1": {"kernel": (3, 3, cout, cout), "bias": (cout,)}}
  if cin != cout or resample:
    out["Conv_2"] = {"kernel": (1, 1, cin, cout), "bias": (cout,)}
  return out


def _attn(c):
  out = {"GroupNorm_0": {"scale": (c,), "bias": (c,)}}
  out.update({f"NIN_{i}": {"W": (c, c), "b": (c,)} for i in range(4)})
  return out


def ncsnpp_shapes(*, nf=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                  image_size=32, channels=3) -> dict:
  """Nested dict module -> param -> shape, as the release's `NCSNpp.init` names them."""
  tree = {"GaussianFourierProjection_0": {"W": (nf,)},
          "Dense_0": {"kernel": (2 * nf, 4 * nf), "bias": (4 * nf,)},
          "Dense_1": {"kernel": (4 * nf, 4 * nf), "bias": (4 * nf,)},
          "Conv_0": {"kernel": (3, 3, channels, nf), "bias": (nf,)}}
  n = {"res": 0, "attn": 0, "down": 0}
  emb = 4 * nf

  def res(cin, cout, resample=False):
    tree[f"ResnetBlockBigGANpp_{n['res']}"] = _res(cin, cout, emb, resample)
    n["res"] += 1

  def attn(c):
    tree[f"AttnBlockpp_{n['attn']}"] = _attn(c)
    n["attn"] += 1

  hs = [nf]
  ch, pyramid = nf, channels
  levels = len(ch_mult)
  for level in range(levels):
    side = image_size // 2 ** level
    for _ in range(num_res_blocks):
      res(ch, nf * ch_mult[level])
      ch = nf * ch_mult[level]
      if side in attn_resolutions:
        attn(ch)
      hs.append(ch)
    if level != levels - 1:
      res(ch, ch, resample=True)
      tree[f"Downsample_{n['down']}"] = {"Conv2d_0": {"weight": (3, 3, pyramid, ch),
                                                      "bias": (ch,)}}
      n["down"] += 1
      pyramid = ch
      hs.append(ch)
  res(ch, ch)
  attn(ch)
  res(ch, ch)
  for level in reversed(range(levels)):
    side = image_size // 2 ** level
    for _ in range(num_res_blocks + 1):
      res(ch + hs.pop(), nf * ch_mult[level])
      ch = nf * ch_mult[level]
    if side in attn_resolutions:
      attn(ch)
    if level != 0:
      res(ch, ch, resample=True)
  assert not hs
  tree["GroupNorm_0"] = {"scale": (ch,), "bias": (ch,)}
  tree["Conv_1"] = {"kernel": (3, 3, ch, channels), "bias": (channels,)}
  return tree


def leaves(tree, prefix=""):
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict):
      yield from leaves(v, path)
    else:
      yield path, v


def constant_tree(shapes: dict) -> dict:
  """Each tensor filled with its own index + 1 (broadcast views: no memory until converted)."""
  counter = iter(range(1, 1 << 30))
  def build(t):
    return {k: build(v) if isinstance(v, dict) else np.broadcast_to(np.float32(next(counter)), v)
            for k, v in t.items()}
  return build(shapes)
