"""The offline default: scikit-learn's 8x8 digits at 16x16, trained in minutes on 2 CPU cores.

Usage: --config=configs/digits.py:method=ict   (or method=ct | edm | trigflow | sct | meanflow;
                                                add ,runlocal for a smoke run)
       --config=configs/digits.py:method=cd --config.teacher=EDM_WORKDIR   (distil an EDM run)
       --config=configs/digits.py:method=ect --config.teacher=EDM_WORKDIR  (tune an EDM run)
       --config=configs/digits.py:method=scd --config.teacher=TRIGFLOW_WORKDIR
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

  # The digits recipe, shared by every method so that the methods table compares them on one
  # network, batch and number of steps (the teachers, trained once outside that budget, take the
  # same network; CD, ECT and sCD must match it). A small UNet at 8x8 and 4x4 after a 2x2
  # patchify stem, one residual block a level (0.87M parameters), conditioned on
  # the class (sampling draws labels uniformly, as the classes of the data are balanced).
  # Fourier scale 0.005 keeps the time embedding nearly linear in ln(sigma), so what is learnt at
  # one level carries to its neighbours. Batch 64 makes a step cheap enough that 2000 of them fit
  # the minutes of the default: consistency training gains more from steps than from batch or
  # width. What each choice bought: README, "Results on the digits default".
  c.model.update(dict(name="tiny", channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      patch_size=2, attn_resolutions=(4,), fourier_scale=0.005, dropout=0.0,
                      class_conditional=True))
  c.train.update(dict(batch_size=64, num_steps=2000, log_every=100, save_every=500,
                      sample_every=1000, num_grid_samples=100))
  c.optim.update(dict(name="radam", learning_rate=1e-3))
  c.ema_rate = 0.995          # short runs want a short evaluation EMA (0.998: README)

  # Scored on 1000 samples (the held-out floor on its 300): fewer leave the Frechet figure biased.
  c.eval.num_samples = 1000

  if c.method == "ict":
    # The default. s1 = 160 instead of the paper's 1280: the doubling curriculum then spends 1/5
    # of the run per stage instead of 1/8.
    c.consistency.update(dict(distance="pseudo_huber", s0=10, s1=160, p_mean=-1.1, p_std=2.0))
    # The 2-step level: at this budget the best lies at sigma 2-3, well above CIFAR-10's 0.821
    # (the sweep: README).
    c.sample.two_step_sigma = 2.5
  elif c.method == "ct":
    c.consistency.update(dict(distance="l2", s0=2, s1=150, mu0=0.9, ema_schedule="paper"))
  elif c.method == "edm":
    # One network evaluation a step (CT and iCT 2, CD 4 with the Heun teacher): 2400 steps take
    # about the minutes of iCT's 2000.
    c.train.num_steps = 2400
  elif c.method == "cd":  # CIFAR-10's CD recipe (N = 18, Heun teacher, mu = 0) with iCT's loss
    # iCT's pseudo-Huber and lambda = 1 / (s_{n+1} - s_n) instead of CM's l2 and lambda = 1: with
    # those the student forgets the teacher's low levels (it darkens real digits noised to a
    # small sigma), so a second sampling step makes samples worse, not better (README,
    # "Distillation").
    c.consistency.distance = "pseudo_huber"
    c.distill.update(dict(num_levels=18, solver="heun", target_decay=0.0, weighting="inverse_gap"))
    c.sample.two_step_sigma = 1.5
    # The student starts from a trained teacher: at 1e-3 RAdam's normalised steps add speckle
    # the loss cannot see (README).
    c.optim.learning_rate = 1e-4
  elif c.method == "ect":  # tunes a trained EDM workdir: --config.teacher=runs/digits_edm
    # ECT's r(t) schedule with 10 stages over the 2000 steps (CIFAR-10: 16 of 25k over 400k);
    # iCT's pseudo-Huber c, so that ECT and iCT differ only in the start and the levels.
    c.ect.update(dict(p_mean=-1.1, p_std=2.0, q=2.0, k=8.0, b=1.0, stage_steps=200,
                      huber_c=-1.0))
    # The network starts trained (as CD's): a small rate. Checkpoints every 500 steps kept, so the
    # table can score ECT before the end.
    c.optim.learning_rate = 2e-4
    c.train.keep_checkpoints = 4
  elif c.method == "trigflow":  # the sCD teacher: EDM's budget (2400 steps, one evaluation each)
    c.train.num_steps = 2400
    c.scm.update(dict(p_mean=-1.0, p_std=1.4, time_scale=1.0))
  elif c.method in ("sct", "scd"):
    # sCM's CIFAR-10 tau ~ N(-1.0, 1.4^2), c_noise = t (a range close to EDM's 0.25 ln sigma, for
    # which the Fourier scale was chosen), the tangent warm-up over the first 10% of the run
    # (sCM: 10k of 400k), normalisation c = 0.1, 2-step sampling through t = 1.1.
    c.scm.update(dict(p_mean=-1.0, p_std=1.4, time_scale=1.0, warmup_steps=200,
                      tangent_norm_c=0.1, two_step_t=1.1))
    if c.method == "scd":  # starts from its TrigFlow teacher (--config.teacher), as CD does
      c.optim.learning_rate = 2e-4
    else:
      # sCT: sCM's prior weight 1 / (sigma_d tan t), which helps its one step, and the second
      # step through t = 0.2, the only level that beats one step; sCD gains nothing from the
      # prior weight (README, "Beyond the paper").
      c.scm.update(dict(prior_weighting=True, two_step_t=0.2))

  elif c.method == "meanflow":
    # The same network (with a second time input, t - r), batch, steps and optimizer as iCT.
    # MeanFlow's CIFAR-10 settings (pixel space, as here): t, r ~ logit-normal(-2, 2), r != t for
    # 75% of the samples, adaptive weight power 0.75; no guidance (cfg_omega 1).
    c.model.time_inputs = 2
    c.meanflow.update(dict(p_mean=-2.0, p_std=2.0, ratio_r_neq_t=0.75, norm_p=0.75, norm_c=1e-3,
                           time_scale=1.0, two_step_t=0.5))

  if runlocal:
    c.model.update(dict(channels=16, num_res_blocks=1, attn_resolutions=()))
    c.train.update(dict(batch_size=16, num_steps=4, log_every=2, save_every=2,
                        sample_every=4, num_grid_samples=16))
    c.eval.num_samples = 64
  return c
