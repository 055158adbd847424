"""The tensor names and shapes of guided-diffusion's `UNetModel` (the CM PyTorch release), written
out from that code's construction rules, independently of the importer's mapping: what the
structure tests enumerate and what the fake release files of the CLI tests hold."""
from __future__ import annotations

import numpy as np


def _res(prefix, cin, cout, emb, scale_shift):
  out = {f"{prefix}.in_layers.0.weight": (cin,), f"{prefix}.in_layers.0.bias": (cin,),
         f"{prefix}.in_layers.2.weight": (cout, cin, 3, 3), f"{prefix}.in_layers.2.bias": (cout,),
         f"{prefix}.emb_layers.1.weight": ((2 if scale_shift else 1) * cout, emb),
         f"{prefix}.emb_layers.1.bias": ((2 if scale_shift else 1) * cout,),
         f"{prefix}.out_layers.0.weight": (cout,), f"{prefix}.out_layers.0.bias": (cout,),
         f"{prefix}.out_layers.3.weight": (cout, cout, 3, 3), f"{prefix}.out_layers.3.bias": (cout,)}
  if cin != cout:
    out[f"{prefix}.skip_connection.weight"] = (cout, cin, 1, 1)
    out[f"{prefix}.skip_connection.bias"] = (cout,)
  return out


def _attn(prefix, c):
  return {f"{prefix}.norm.weight": (c,), f"{prefix}.norm.bias": (c,),
          f"{prefix}.qkv.weight": (3 * c, c, 1), f"{prefix}.qkv.bias": (3 * c,),
          f"{prefix}.proj_out.weight": (c, c, 1), f"{prefix}.proj_out.bias": (c,)}


def unet_shapes(*, image_size, in_channels=3, model_channels, out_channels=3, num_res_blocks,
                attention_resolutions, channel_mult, num_classes=None, use_scale_shift_norm):
  """key -> shape for UNetModel(..., resblock_updown=True, learn_sigma off); attention
  resolutions are downsampling rates (image_size // side), as the release's scripts pass them."""
  emb = 4 * model_channels
  shapes = {"time_embed.0.weight": (emb, model_channels), "time_embed.0.bias": (emb,),
            "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,)}
  if num_classes:
    shapes["label_emb.weight"] = (num_classes, emb)
  ch = model_channels * channel_mult[0]
  shapes["input_blocks.0.0.weight"] = (ch, in_channels, 3, 3)
  shapes["input_blocks.0.0.bias"] = (ch,)
  skips, ds, n = [ch], 1, 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      shapes.update(_res(f"input_blocks.{n}.0", ch, mult * model_channels, emb,
                         use_scale_shift_norm))
      ch = mult * model_channels
      if ds in attention_resolutions:
        shapes.update(_attn(f"input_blocks.{n}.1", ch))
      skips.append(ch)
      n += 1
    if level != len(channel_mult) - 1:
      shapes.update(_res(f"input_blocks.{n}.0", ch, ch, emb, use_scale_shift_norm))
      skips.append(ch)
      ds *= 2
      n += 1
  shapes.update(_res("middle_block.0", ch, ch, emb, use_scale_shift_norm))
  shapes.update(_attn("middle_block.1", ch))
  shapes.update(_res("middle_block.2", ch, ch, emb, use_scale_shift_norm))
  n = 0
  for level, mult in list(enumerate(channel_mult))[::-1]:
    for i in range(num_res_blocks + 1):
      cin = ch + skips.pop()
      ch = model_channels * mult
      shapes.update(_res(f"output_blocks.{n}.0", cin, ch, emb, use_scale_shift_norm))
      sub = 1
      if ds in attention_resolutions:
        shapes.update(_attn(f"output_blocks.{n}.1", ch))
        sub = 2
      if level and i == num_res_blocks:
        shapes.update(_res(f"output_blocks.{n}.{sub}", ch, ch, emb, use_scale_shift_norm))
        ds //= 2
      n += 1
  shapes.update({"out.0.weight": (ch,), "out.0.bias": (ch,),
                 "out.2.weight": (out_channels, ch, 3, 3), "out.2.bias": (out_channels,)})
  return shapes


IMAGENET64 = dict(image_size=64, model_channels=192, num_res_blocks=3,
                  attention_resolutions=(2, 4, 8), channel_mult=(1, 2, 3, 4), num_classes=1000,
                  use_scale_shift_norm=True)
LSUN256 = dict(image_size=256, model_channels=256, num_res_blocks=2,
               attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4),
               num_classes=None, use_scale_shift_norm=False)


def random_state(shapes: dict, seed: int = 0, scale: float = 0.05) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: (scale * rng.standard_normal(s)).astype(np.float32)
          + (1.0 if len(s) == 1 and (".norm." in k or "layers.0." in k or k.startswith("out.0"))
             and k.endswith("weight") else 0.0)
          for k, s in shapes.items()}
