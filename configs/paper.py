"""What the paper configs (configs/cifar10.py, imagenet64.py, lsun256.py) share.

Each dataset file holds its own numbers (its columns of CM Table 3, docs/maths.md §11, the
release's differing launch settings, its network) and builds its config from `configs/base.py`
with the helpers here: the argument parser, the CM/iCT/EDM recipes, the two paper networks and
the `runlocal` shrink. Nothing is copied between the dataset files.

Defaults follow the papers; `variant=release` applies the PyTorch / JAX releases' launch settings
where they differ, named in each dataset file's `RELEASE` (docs/maths.md §11).
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections

from cm_jax import karras
from configs import base

VARIANTS = ("paper", "release")
SIGMA_MAX, SIGMA_MIN, RHO = 80.0, 0.002, 7.0


@dataclasses.dataclass(frozen=True)
class Args:
  method: str
  variant: str
  runlocal: bool
  extra: dict[str, str]


def parse(arg: str | None, *, file: str, methods: dict[str, tuple[str, ...]],
          extra: dict[str, tuple[str, ...]] | None = None) -> Args:
  """Parses 'method=X[,variant=Y][,KEY=V][,runlocal]'.

  methods: method -> the variants it has (first = default). extra: other keys -> allowed values
  (first = default). Anything else is an error that lists what is valid.
  """
  method, runlocal, rest = base.parse_args(arg)
  extra = dict(extra or {})
  usage = (f"{file}:method={'|'.join(methods)}[,variant={'|'.join(VARIANTS)}]"
           + "".join(f"[,{k}={'|'.join(v)}]" for k, v in extra.items()) + "[,runlocal]")
  if method is None:
    raise ValueError(f"{file} needs a method: --config={usage}.")
  if method not in methods:
    raise ValueError(f"Unknown method {method!r} for {file}; choose one of "
                     f"{', '.join(methods)} (--config={usage}).")
  variant = rest.pop("variant", methods[method][0])
  if variant not in methods[method]:
    raise ValueError(f"{file}:method={method} has variant {' | '.join(methods[method])}, not "
                     f"{variant!r} (--config={usage}).")
  values = {}
  for key, allowed in extra.items():
    values[key] = rest.pop(key, allowed[0])
    if values[key] not in allowed:
      raise ValueError(f"{file}: {key}={values[key]!r} is not one of {', '.join(allowed)} "
                       f"(--config={usage}).")
  if rest:
    raise ValueError(f"{file} does not take {', '.join(sorted(rest))}; it takes method, variant"
                     + "".join(f", {k}" for k in extra) + f" and runlocal: --config={usage}.")
  return Args(method=method, variant=variant, runlocal=runlocal, extra=values)


def ts_sigma(index: int, steps: int) -> float:
  """The level of a release `ts` index into a descending Karras grid of `steps` levels
  (docs/maths.md §8)."""
  levels = karras.NoiseLevels(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO)
  return float(karras.ts_to_sigmas([index], steps, levels)[0])


def ema_from_half_life(half_life_images: float, batch_size: int) -> float:
  """The per-step EMA decay whose weights halve every `half_life_images` training images."""
  return math.exp(math.log(0.5) / (half_life_images / batch_size))


def steps_for_images(images: float, batch_size: int) -> int:
  return int(images // batch_size)


@dataclasses.dataclass(frozen=True)
class Row:
  """One column of CM Table 3 (or an iCT / EDM recipe): what a method run sets."""
  learning_rate: float
  batch_size: int
  steps: int
  ema_rate: float
  optimizer: str = "radam"
  bfloat16: bool = False            # the paper's fp16; bfloat16 is the JAX-native half type
  dropout: float = 0.0
  warmup_images: float = 0.0        # linear learning-rate warm-up over this many images
  # CT: the curriculum and the target EMA mu(k); CD: the fixed grid N, solver and target mu.
  s0: int = 2
  s1: int = 150
  mu0: float = 0.9
  num_levels: int = 18
  target_decay: float = 0.0
  distance: str = "lpips"
  two_step_sigma: float = 0.821     # the intermediate level of 2-step sampling


def apply_row(c: ml_collections.ConfigDict, method: str, row: Row) -> None:
  """Sets the optimizer, batch, schedule and method block of `c` from `row`."""
  c.optim.update(dict(name=row.optimizer, learning_rate=row.learning_rate, warmup_steps=
                      steps_for_images(row.warmup_images, row.batch_size), grad_clip=0.0))
  c.train.update(dict(batch_size=row.batch_size, num_steps=row.steps))
  c.ema_rate = row.ema_rate
  c.model.dropout = row.dropout
  c.model.dtype = "bfloat16" if row.bfloat16 else "float32"
  c.sample.two_step_sigma = row.two_step_sigma
  if method == "ct":
    c.consistency.update(dict(distance=row.distance, s0=row.s0, s1=row.s1, mu0=row.mu0,
                              ema_schedule="paper"))
  elif method == "cd":
    c.consistency.distance = row.distance
    c.distill.update(dict(num_levels=row.num_levels, solver="heun",
                          target_decay=row.target_decay))
  elif method in ("ict", "ict_deep"):
    # docs/maths.md §5: teacher = stopgrad(theta), pseudo-Huber, log-normal pairs, N doubling
    # 11 -> 1281.
    c.consistency.update(dict(distance="pseudo_huber", s0=10, s1=1280, p_mean=-1.1, p_std=2.0))
  elif method == "edm":
    c.edm.update(dict(p_mean=-1.2, p_std=1.2))
    c.sample.update(dict(edm_levels=row.num_levels, edm_solver="heun"))
  elif method == "meanflow":
    pass  # its block (c.meanflow) and two time inputs come from the dataset file's overrides
  elif method in ("ect", "trigflow", "sct", "scd"):
    # Their own blocks (c.ect, c.scm) come from the dataset file's overrides; the TrigFlow teacher
    # is sampled by the EDM ODE solver over the row's levels.
    c.sample.update(dict(edm_levels=row.num_levels, edm_solver="heun"))
  else:
    raise ValueError(f"No paper recipe for method {method!r}.")
  # The library knows ict_deep as ict with a deeper network (set by the dataset file).
  c.method = "ict" if method == "ict_deep" else method


def scm_keys(p_mean: float, p_std: float) -> dict[str, dict]:
  """The c.scm overrides of the TrigFlow teacher and of sCT / sCD (docs/maths.md §7) for
  tau ~ N(p_mean, p_std^2): c_noise = t, tangent warm-up over 10k steps, normalisation c = 0.1,
  2 steps via t = 1.1."""
  teacher = {"scm.p_mean": p_mean, "scm.p_std": p_std, "scm.time_scale": 1.0}
  consistency = {**teacher, "scm.warmup_steps": 10_000, "scm.tangent_norm_c": 0.1,
                 "scm.two_step_t": 1.1}
  return {"trigflow": teacher, "sct": consistency, "scd": consistency}


def meanflow_keys(*, p_mean: float, p_std: float, ratio_r_neq_t: float, norm_p: float,
                  **guidance) -> dict:
  """The overrides of a MeanFlow row: two time inputs, the (t, r) sampler, the adaptive weight's
  power (c = 1e-3), and classifier-free guidance (cfg_omega, cfg_kappa, class_dropout) if given;
  guidance trains a 'no class' label."""
  keys = {"model.time_inputs": 2, "meanflow.p_mean": p_mean, "meanflow.p_std": p_std,
          "meanflow.ratio_r_neq_t": ratio_r_neq_t, "meanflow.norm_p": norm_p,
          "meanflow.norm_c": 1e-3, "meanflow.two_step_t": 0.5}
  keys.update({f"meanflow.{k}": v for k, v in guidance.items()})
  if guidance.get("class_dropout", 0) > 0:
    keys["model.null_class"] = True
  return keys


def apply_overrides(c: ml_collections.ConfigDict, overrides: dict) -> None:
  """Flattened `{'optim.learning_rate': 1e-4, ...}` onto `c` (unknown keys are errors)."""
  c.update_from_flattened_dict(dict(overrides))


def finish(c: ml_collections.ConfigDict, args, row: Row, method_keys: dict | None = None,
           release: dict | None = None) -> ml_collections.ConfigDict:
  """The common tail of every dataset file: the Table 3 row, the method's own keys, the release
  variant's launch settings, then the `runlocal` shrink."""
  apply_row(c, args.method, row)
  apply_overrides(c, (method_keys or {}).get(args.method, {}))
  if args.variant == "release":
    apply_overrides(c, release[args.method])
  if args.runlocal:
    runlocal(c)
  return c


def ncsnpp(c: ml_collections.ConfigDict, *, fourier_scale: float, num_res_blocks: int = 4) -> None:
  """NCSN++ as CM / iCT train it on CIFAR-10 (docs/maths.md §12): nf 128, ch_mult (2, 2, 2),
  attention at 16x16 (and in the 8x8 middle), Fourier time embedding."""
  c.model.update(dict(name="ncsnpp", channels=128, channel_mult=(2, 2, 2),
                      num_res_blocks=num_res_blocks, attn_resolutions=(16,), patch_size=1,
                      fourier_scale=fourier_scale, emb_dim=512, class_conditional=False))


def adm(c: ml_collections.ConfigDict, *, channels: int, channel_mult: tuple[int, ...],
        num_res_blocks: int, use_scale_shift_norm: bool, class_conditional: bool) -> None:
  """The ADM UNet of the PyTorch release (docs/maths.md §12): attention at 32/16/8 px, 64
  channels per head, resampling inside residual blocks."""
  c.model.update(dict(name="adm", channels=channels, channel_mult=channel_mult,
                      num_res_blocks=num_res_blocks, attn_resolutions=(32, 16, 8), patch_size=1,
                      num_head_channels=64, use_scale_shift_norm=use_scale_shift_norm,
                      resblock_updown=True, emb_dim=4 * channels,
                      class_conditional=class_conditional))


def dataset(c: ml_collections.ConfigDict, name: str, resolution: int, num_classes: int,
            num_workers: int = 4) -> None:
  """num_workers: grain threads, each preparing a whole local batch (LSUN's JPEG decode and crop
  is the input's main cost: docs/datasets.md)."""
  c.data.update(dict(name=name, resolution=resolution, channels=3, num_classes=num_classes,
                     random_flip=True, num_workers=num_workers))


def runlocal(c: ml_collections.ConfigDict, resolution: int = 8) -> None:
  """Shrinks a paper config to a CPU smoke run that compiles in seconds.

  Same method, recipe switches, network family, dtype and dataset (read and downsampled to
  `resolution`); the network keeps one level, with attention, a few channels wide and a quarter
  of the depth (at least one block: iCT-deep keeps twice iCT's); batch 8, 4 steps. LPIPS becomes
  l2: a smoke run has no converted VGG16/LPIPS weights. The data must still be prepared: on a
  machine without the dataset, `python -m cm_jax.data.fake --dataset=NAME --out=DIR` writes a
  small random stand-in (then --config.data.data_dir=DIR).
  """
  c.data.resolution = resolution
  blocks = max(1, int(c.model.num_res_blocks) // 4)
  if c.model.name == "adm":  # GroupNorm(32) needs widths that are multiples of 32
    c.model.update(dict(channels=32, num_head_channels=32, emb_dim=128))
  else:
    c.model.update(dict(channels=16, emb_dim=64))
  c.model.update(dict(channel_mult=(1,), num_res_blocks=blocks, attn_resolutions=(resolution,)))
  if c.consistency.distance == "lpips":
    c.consistency.distance = "l2"
  c.optim.warmup_steps = min(int(c.optim.warmup_steps), 2)
  c.sample.edm_levels = min(int(c.sample.edm_levels), 4)
  c.train.update(dict(batch_size=8, num_steps=4, log_every=2, save_every=2, sample_every=4,
                      num_grid_samples=8))
  c.eval.num_samples = 8
  c.data.num_workers = 0
