"""CIFAR-10 32x32 (TFDS `cifar10`): CM Table 3's CIFAR-10 columns, the EDM teacher, iCT.

Usage: --config=configs/cifar10.py:method=edm                       the teacher
       --config=configs/cifar10.py:method=cd --config.teacher=EDM    CD, LPIPS (Table 3)
       --config=configs/cifar10.py:method=ct                         CT, LPIPS (Table 3)
       --config=configs/cifar10.py:method=ict | method=ict_deep       iCT / iCT-deep
       --config=configs/cifar10.py:method=ect --config.teacher=EDM   ECT
       --config=configs/cifar10.py:method=trigflow                   the sCD teacher
       --config=configs/cifar10.py:method=sct | method=scd --config.teacher=TRIGFLOW   sCT / sCD
       --config=configs/cifar10.py:method=meanflow                   MeanFlow (docs/meanflow.md)
       add ,variant=release for the JAX release's launch settings (cd, ct), ,runlocal to shrink.
The rows: docs/maths.md §11 (CM Table 3, the EDM teacher), §5 (iCT), §6 (ECT), §7 (sCM).

Network: NCSN++ (docs/maths.md §12), Fourier embedding scale 16 (CM) or 0.02 (iCT).
Unconditional. Optimizer: RAdam as the paper says (the release's CD/CT configs use RAdam too; EDM
uses Adam).
"""
import math

import ml_collections

from configs import base
from configs import paper

FILE = "configs/cifar10.py"
METHODS = {"edm": ("paper",), "cd": ("paper", "release"), "ct": ("paper", "release"),
           "ict": ("paper",), "ict_deep": ("paper",), "ect": ("paper",), "trigflow": ("paper",),
           "sct": ("paper",), "scd": ("paper",), "meanflow": ("paper",)}

ROWS = {
    # CM Table 3, CIFAR-10 CD / CT: RAdam 4e-4, batch 512, 800k steps, EMA 0.9999, no warm-up.
    # CD: Heun teacher over N = 18, target mu = 0; 2-step ts 0,11,17 of 18 (docs/maths.md §8).
    "cd": paper.Row(learning_rate=4e-4, batch_size=512, steps=800_000, ema_rate=0.9999,
                    num_levels=18, target_decay=0.0, two_step_sigma=paper.ts_sigma(11, 18)),
    # CT: s0 = 2, s1 = 150, mu0 = 0.9. (No released 2-step level: iCT's 0.821.)
    "ct": paper.Row(learning_rate=4e-4, batch_size=512, steps=800_000, ema_rate=0.9999,
                    s0=2, s1=150, mu0=0.9),
    # iCT (docs/maths.md §5): RAdam 1e-4, batch 1024, 400k steps, EMA 0.99993, dropout 0.3;
    # 2 steps via 0.821.
    "ict": paper.Row(learning_rate=1e-4, batch_size=1024, steps=400_000, ema_rate=0.99993,
                     dropout=0.3, distance="pseudo_huber", two_step_sigma=0.821),
    # The EDM teacher (docs/maths.md §11): Adam 1e-3, batch 512, 400k steps, dropout 0.13, EMA
    # half-life 0.5M images; the learning rate ramps up over 10M images (EDM paper and the JAX
    # release); sampled with Heun over 18 levels (35 evaluations).
    "edm": paper.Row(learning_rate=1e-3, batch_size=512, steps=400_000, optimizer="adam",
                     ema_rate=paper.ema_from_half_life(0.5e6, 512), dropout=0.13,
                     warmup_images=1e7, num_levels=18),
}
ROWS["ict_deep"] = ROWS["ict"]

# Beyond CM (docs/maths.md §6, §7, §10). ECT tunes the `method=edm` workdir
# (--config.teacher=EDM): §6's batch 128, RAdam 1e-4, dropout 0.2, EMA 0.9999, a stage every 25k
# steps, c = 0, 400k steps (the "ECT (400k)" row); 2 steps through 0.821.
ROWS["ect"] = paper.Row(learning_rate=1e-4, batch_size=128, steps=400_000, ema_rate=0.9999,
                       dropout=0.2, distance="pseudo_huber", two_step_sigma=0.821)
# sCT / sCD and the TrigFlow teacher of sCD: the sCM paper fixes the loss (docs/maths.md §7), not
# the launch settings. The
# values below (batch 512, RAdam 1e-4, EMA 0.9999, dropout 0.2, 400k steps, tau ~ N(-1.0, 1.4^2))
# are our reading of the sCM paper's CIFAR-10 setup, unchecked against its appendix: check them
# before a paper-scale run. The teacher reuses them with EDM's 18 Heun levels for sampling.
ROWS["sct"] = ROWS["scd"] = ROWS["trigflow"] = paper.Row(
    learning_rate=1e-4, batch_size=512, steps=400_000, ema_rate=0.9999, dropout=0.2,
    num_levels=18)
METHOD_KEYS = {
    "ect": {"ect.p_mean": -1.1, "ect.p_std": 2.0, "ect.q": 2.0, "ect.k": 8.0, "ect.b": 1.0,
            "ect.stage_steps": 25_000, "ect.huber_c": 0.0},
}
METHOD_KEYS.update(paper.scm_keys(p_mean=-1.0, p_std=1.4))
# MeanFlow's CIFAR-10 row (paper appendix; its PyTorch release's launch line): Adam 6e-4 (0.9,
# 0.999), batch 1024, 800k steps, a 10M-image warm-up (200 epochs), EMA 0.99995, dropout 0.2;
# t, r ~ logit-normal(-2, 2), r != t for 75%, adaptive weight p = 0.75, c = 1e-3; unconditional,
# 1-NFE FID 2.92. Not here: the release's EDM augmentation (an augment label into the network).
# The release's DDPM++ embeds t and t - r apart (positional features of the raw times, frequencies
# up to 1) side by side: our NCSN++ does the same with Fourier features of scale 1 / (2 pi), so
# that 2 pi W has unit spread (our choice). 2 steps through t = 0.5 (our choice).
ROWS["meanflow"] = paper.Row(learning_rate=6e-4, batch_size=1024, steps=800_000, ema_rate=0.99995,
                            optimizer="adam", dropout=0.2, warmup_images=1e7)
METHOD_KEYS["meanflow"] = paper.meanflow_keys(p_mean=-2.0, p_std=2.0, ratio_r_neq_t=0.75,
                                              norm_p=0.75)

# The JAX release (openai/consistency_models_cifar10 configs cifar10_ve_cd.py,
# cifar10_ve_ct_adaptive.py): a 10M-image warm-up for both, CT at lr 2e-4 and the release's
# mu(k) = exp(s0 ln mu0 / (N(k) - 1)) (docs/maths.md §3).
WARMUP_10M = paper.steps_for_images(1e7, 512)
RELEASE = {
    "cd": {"optim.warmup_steps": WARMUP_10M},
    "ct": {"optim.warmup_steps": WARMUP_10M, "optim.learning_rate": 2e-4,
           "consistency.ema_schedule": "release"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = paper.parse(arg, file=FILE, methods=METHODS)
  c = base.get_base_config()
  paper.dataset(c, "cifar10", resolution=32, num_classes=10)
  # iCT and sCM replaced CM's Fourier scale 16 with 0.02; ECT keeps its EDM teacher's network.
  is_ict = args.method in ("ict", "ict_deep", "trigflow", "sct", "scd")
  # iCT-deep doubles the depth: 8 residual blocks per level instead of 4.
  fourier = 0.02 if is_ict else 1 / (2 * math.pi) if args.method == "meanflow" else 16.0
  paper.ncsnpp(c, fourier_scale=fourier,
               num_res_blocks=8 if args.method == "ict_deep" else 4)
  return paper.finish(c, args, ROWS[args.method], METHOD_KEYS, RELEASE)
