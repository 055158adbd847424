"""Class-conditional ImageNet 64x64 (TFDS `imagenet_resized/64x64`): CM Table 3's ImageNet 64
columns, the EDM teacher, iCT.

Usage: --config=configs/imagenet64.py:method=edm                     the teacher
       --config=configs/imagenet64.py:method=cd --config.teacher=EDM  CD, LPIPS (Table 3)
       --config=configs/imagenet64.py:method=ct                       CT, LPIPS (Table 3)
       --config=configs/imagenet64.py:method=ict                      iCT (docs/maths.md §5)
       --config=configs/imagenet64.py:method=trigflow | sct | scd --config.teacher=TRIGFLOW (scd)
       --config=configs/imagenet64.py:method=meanflow                  MeanFlow (our choices)
       add ,variant=release for the PyTorch release's launch settings (cd, ct), ,runlocal to shrink.

Network: the ADM UNet of docs/maths.md §12 (192 channels, mult 1,2,3,4, 3 blocks, attention at
32/16/8, scale-shift norm, 1000 classes), bfloat16 compute where the paper trained in fp16.
Optimizer: RAdam by default, as the paper's Table 3 says; the release trained with Adam
(`variant=release`).
"""
import ml_collections

from configs import base
from configs import paper

FILE = "configs/imagenet64.py"
METHODS = {"edm": ("paper",), "cd": ("paper", "release"), "ct": ("paper", "release"),
           "ict": ("paper",), "trigflow": ("paper",), "sct": ("paper",), "scd": ("paper",),
           "meanflow": ("paper",)}
EMA = 0.9999432189950708  # Table 3's 0.999943, as the release writes it

ROWS = {
    # CM Table 3, ImageNet 64 CD: lr 8e-6, batch 2048, 600k steps, fp16, Heun over N = 40,
    # target mu = 0.95; 2-step ts 0,22,39 of 40 (docs/maths.md §8).
    "cd": paper.Row(learning_rate=8e-6, batch_size=2048, steps=600_000, ema_rate=EMA,
                    bfloat16=True, num_levels=40, target_decay=0.95,
                    two_step_sigma=paper.ts_sigma(22, 40)),
    # CT: lr 8e-6, batch 2048, 800k steps, s0 = 2, s1 = 200, mu0 = 0.95; ts 0,106,200 of 201.
    "ct": paper.Row(learning_rate=8e-6, batch_size=2048, steps=800_000, ema_rate=EMA,
                    bfloat16=True, s0=2, s1=200, mu0=0.95, two_step_sigma=paper.ts_sigma(106, 201)),
    # iCT: the method of docs/maths.md §5 (pseudo-Huber, log-normal pairs, N 11 -> 1281, RAdam
    # 1e-4). §5 fixes CIFAR-10's batch/EMA/dropout/length only; these are the iCT paper's
    # ImageNet 64 values as we read its hyper-parameter table (batch 4096, EMA 0.99997, dropout
    # 0.2, 800k steps, mixed precision): check them before a paper-scale run.
    "ict": paper.Row(learning_rate=1e-4, batch_size=4096, steps=800_000, ema_rate=0.99997,
                     bfloat16=True, dropout=0.2, distance="pseudo_huber", two_step_sigma=0.821),
    # The EDM teacher, from the release's edm_train.py launch line (the paper gives no EDM
    # hyper-parameters): Adam 1e-4, batch 4096, dropout 0.1, fp16, EMA 0.999943; sampled with Heun
    # over 40 levels (79 evaluations). The launch line runs until stopped: 610k steps here,
    # EDM's ImageNet 64 budget of 2500M images.
    "edm": paper.Row(learning_rate=1e-4, batch_size=4096, steps=paper.steps_for_images(2.5e9, 4096),
                     optimizer="adam", ema_rate=EMA, bfloat16=True, dropout=0.1, num_levels=40),
}

# sCT / sCD (docs/maths.md §7, §10) and sCD's TrigFlow teacher on this ADM UNet (the sCM paper's
# XL rows used a larger EDM2 network: these rows are the method at this network's scale).
# tau ~ N(-0.8, 1.6^2) as for ImageNet in §6; batch 2048, RAdam 1e-4, bf16, EMA 0.9999432 (as
# above), 400k steps are our reading of the sCM setup, unchecked: check them before a paper-scale
# run.
ROWS["sct"] = ROWS["scd"] = ROWS["trigflow"] = paper.Row(
    learning_rate=1e-4, batch_size=2048, steps=400_000, ema_rate=EMA, bfloat16=True,
    dropout=0.2, num_levels=40)
METHOD_KEYS = paper.scm_keys(p_mean=-0.8, p_std=1.6)

# MeanFlow on this ADM UNet in pixel space: OUR CHOICE, not a paper row (the paper's ImageNet rows
# are DiT on 256x256 latents). From those rows: t, r ~ logit-normal(-0.4, 1.0), r != t for 25%,
# adaptive weight p = 1, labels dropped 10% of the time, guidance w = 2 folded into the target
# (the paper's XL/2 range; unchecked at 64x64 pixels). Adam 1e-4, batch 2048, bf16, EMA 0.9999432,
# 400k steps as for sCT here. Check every value before a paper-scale run.
ROWS["meanflow"] = paper.Row(learning_rate=1e-4, batch_size=2048, steps=400_000, ema_rate=EMA,
                            optimizer="adam", bfloat16=True, dropout=0.1)
METHOD_KEYS["meanflow"] = paper.meanflow_keys(p_mean=-0.4, p_std=1.0, ratio_r_neq_t=0.25,
                                              norm_p=1.0, cfg_omega=2.0, class_dropout=0.1)

# The PyTorch release's cm_train.py launch lines: Adam, CT at lr 1e-4 with the release's
# mu(k) = exp(s0 ln mu0 / (N(k) - 1)). (Its CT also starts from the EDM teacher's weights; add
# --config.teacher=EDM_WORKDIR for that.)
RELEASE = {
    "cd": {"optim.name": "adam"},
    "ct": {"optim.name": "adam", "optim.learning_rate": 1e-4,
           "consistency.ema_schedule": "release"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = paper.parse(arg, file=FILE, methods=METHODS)
  c = base.get_base_config()
  paper.dataset(c, "imagenet_resized/64x64", resolution=64, num_classes=1000)
  paper.adm(c, channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
            use_scale_shift_norm=True, class_conditional=True)
  return paper.finish(c, args, ROWS[args.method], METHOD_KEYS, RELEASE)
