"""LSUN Bedroom / Cat 256x256 (TFDS `lsun/bedroom`, `lsun/cat`, centre-cropped as the release
does): CM Table 3's LSUN columns and the EDM teacher. Unconditional.

Usage: --config=configs/lsun256.py:method=edm,category=bedroom          the teacher
       --config=configs/lsun256.py:method=cd,category=cat --config.teacher=EDM   CD, LPIPS
       --config=configs/lsun256.py:method=ct,category=bedroom           CT, LPIPS
       add ,variant=release for the PyTorch release's launch settings (cd, ct), ,runlocal to shrink.

Network: the ADM UNet of docs/maths.md §12 (256 channels, mult 1,1,2,2,4,4, 2 blocks, attention
at 32/16/8, no scale-shift norm), bfloat16 compute where the paper trained in fp16.
Optimizer: RAdam by default, as the paper's Table 3 says; the release trained with Adam
(`variant=release`).
"""
import ml_collections

from configs import base
from configs import paper

FILE = "configs/lsun256.py"
METHODS = {"edm": ("paper",), "cd": ("paper", "release"), "ct": ("paper", "release")}
CATEGORIES = ("bedroom", "cat")
EMA = 0.9999432189950708  # Table 3's 0.999943, as the release writes it

# The release's 2-step levels (docs/maths.md §8): CD-LPIPS on Bedroom ts 0,17,39 of 40 (none
# published for Cat CD: the same); CT ts 0,67,150 (Bedroom) and 0,62,150 (Cat) of 151.
CD_TWO_STEP = {"bedroom": paper.ts_sigma(17, 40), "cat": paper.ts_sigma(17, 40)}
CT_TWO_STEP = {"bedroom": paper.ts_sigma(67, 151), "cat": paper.ts_sigma(62, 151)}


def rows(category: str) -> dict:
  return {
      # CM Table 3, LSUN CD: lr 1e-5, batch 2048, 600k steps, fp16, Heun over N = 40, mu = 0.95.
      "cd": paper.Row(learning_rate=1e-5, batch_size=2048, steps=600_000, ema_rate=EMA,
                      bfloat16=True, num_levels=40, target_decay=0.95,
                      two_step_sigma=CD_TWO_STEP[category]),
      # CT: lr 1e-5, batch 2048, 1000k steps, s0 = 2, s1 = 150, mu0 = 0.95.
      "ct": paper.Row(learning_rate=1e-5, batch_size=2048, steps=1_000_000, ema_rate=EMA,
                      bfloat16=True, s0=2, s1=150, mu0=0.95,
                      two_step_sigma=CT_TWO_STEP[category]),
      # The EDM teacher, from the release's launch line (the paper gives none): Adam 1e-4, batch
      # 256, dropout 0.1, fp16, EMA 0.999943, Heun over 40 levels. The launch line runs until
      # stopped: 1M steps here; set --config.train.num_steps.
      "edm": paper.Row(learning_rate=1e-4, batch_size=256, steps=1_000_000, optimizer="adam",
                       ema_rate=EMA, bfloat16=True, dropout=0.1, num_levels=40),
  }


# The PyTorch release's cm_train.py launch lines: Adam, batch 256, CT at lr 5e-5 with the
# release's mu(k) = exp(s0 ln mu0 / (N(k) - 1)). (Its CT also starts from the EDM teacher's
# weights: add --config.teacher=EDM_WORKDIR for that.)
RELEASE = {
    "cd": {"optim.name": "adam", "train.batch_size": 256},
    "ct": {"optim.name": "adam", "train.batch_size": 256, "optim.learning_rate": 5e-5,
           "consistency.ema_schedule": "release"},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = paper.parse(arg, file=FILE, methods=METHODS, extra={"category": CATEGORIES})
  category = args.extra["category"]
  c = base.get_base_config()
  paper.dataset(c, f"lsun/{category}", resolution=256, num_classes=0, num_workers=16)
  paper.adm(c, channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
            use_scale_shift_norm=False, class_conditional=False)
  return paper.finish(c, args, rows(category)[args.method], release=RELEASE)
