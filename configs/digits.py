"""The offline default: scikit-learn's 8x8 digits at 16x16, trained in minutes on 2 CPU cores.

Usage: --config=configs/digits.py:method=ict   (or method=ct; add ,runlocal for a smoke run)
"""
import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  method, runlocal, rest = base.parse_args(arg)
  if rest:
    raise ValueError(f"configs/digits.py takes method=... and runlocal, not {sorted(rest)}.")
  c = base.get_base_config()
  c.method = method or "ict"
  if c.method not in base.METHODS:
    raise ValueError(f"Unknown method {c.method!r} for configs/digits.py; choose one of "
                     f"{', '.join(base.METHODS)}.")
  c.data.name = "digits"
  c.data.resolution = 16
  c.data.channels = 1
  c.data.num_classes = 10

  # A small UNet at 8x8 and 4x4 after a 2x2 patchify stem (SPEC §13); scale 0.02 makes 1-step
  # samples from sigma = 80 work at this budget.
  c.model.update(dict(name="tiny", channels=64, channel_mult=(1, 2), num_res_blocks=2,
                      patch_size=2, attn_resolutions=(4,), fourier_scale=0.02, dropout=0.0))

  c.train.update(dict(batch_size=128, num_steps=3000, log_every=100, save_every=1000,
                      sample_every=1000, num_grid_samples=100))
  c.optim.update(dict(name="radam", learning_rate=1e-3))
  c.ema_rate = 0.995          # short runs want a short evaluation EMA (SPEC §13)
  c.sample.two_step_sigma = 2.5

  if c.method == "ict":
    c.consistency.update(dict(distance="pseudo_huber", s0=10, s1=1280, p_mean=-1.1, p_std=2.0))
  elif c.method == "ct":
    c.consistency.update(dict(distance="l2", s0=2, s1=150, mu0=0.9, ema_schedule="paper"))

  if runlocal:
    c.model.update(dict(channels=16, num_res_blocks=1, attn_resolutions=()))
    c.train.update(dict(batch_size=16, num_steps=4, log_every=2, save_every=2,
                        sample_every=4, num_grid_samples=16))
    c.eval.num_samples = 64
  return c
