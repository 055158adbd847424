"""The defaults of every config key: configs/base.py builds on them, and a workdir written by an
older version, whose config.json lacks a key added since, takes the key's value from here (the
value that reproduces the older behaviour).

Dataset configs (configs/digits.py, ...) override what differs; the method is chosen by the config
argument (`configs/digits.py:method=ict`).
"""
import ml_collections

def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "ict"
  # The teacher's training workdir: EDM for CD, ECT (and optionally CT), TrigFlow for sCD.
  # Restored read-only from its latest checkpoint: the student starts from its weights, CD and
  # sCD query its EMA. Part of the run's identity: a resume must name the same path.
  c.teacher = ""

  # Noise levels and the boundary condition (docs/maths.md §1).
  c.karras = ml_collections.ConfigDict(
      dict(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0))

  c.data = ml_collections.ConfigDict(dict(
      name="digits",          # registered in cm_jax.data
      resolution=16,
      channels=1,
      num_classes=10,         # 0 = unconditional data
      data_dir="",            # TFDS data dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
      random_flip=False,
      num_workers=0,          # grain read threads; 0 = read in the main thread
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="tiny",
      channels=64,
      channel_mult=(1, 2),
      num_res_blocks=2,
      patch_size=2,
      attn_resolutions=(4,),  # in units of the working grid after the patchify stem
      dropout=0.0,
      fourier_scale=16.0,     # CM: 16; iCT: 0.02
      emb_dim=256,
      class_conditional=False,
      # Paper networks (docs/maths.md §12): attn_resolutions are in pixels for ncsnpp / adm.
      num_head_channels=64,   # adm: channels per attention head
      use_scale_shift_norm=False,  # adm: ImageNet 64 True, LSUN 256 False
      resblock_updown=True,   # adm: resample inside residual blocks
      dtype="float32",        # compute dtype: float32 | bfloat16 (params, optimizer, EMA stay fp32)
      time_inputs=1,          # 2: the network takes (t, t - r) (MeanFlow), each embedded apart
      null_class=False,       # a 'no class' label (index num_classes) for classifier-free guidance
      remat="none",           # ncsnpp / adm blocks: none | dots (keep conv/matmul outputs,
                              # recompute norms and activations) | full (keep block inputs)
  ))

  # Consistency training, shared by CT and iCT (docs/maths.md §3-§5); each method sets its own.
  c.consistency = ml_collections.ConfigDict(dict(
      distance="l2",          # l1 | l2 | pseudo_huber
      lpips_weights="",       # distance=lpips: DIR from `python -m cm_jax.convert lpips`
      s0=2,
      s1=150,
      mu0=0.9,
      ema_schedule="paper",   # paper | release (CT target EMA, docs/maths.md §3)
      p_mean=-1.1,            # iCT log-normal pair sampling
      p_std=2.0,
  ))

  # The EDM denoiser (docs/maths.md §1), the teacher of CD and ECT: ln sigma ~ N(p_mean, p_std^2)
  # in training.
  c.edm = ml_collections.ConfigDict(dict(p_mean=-1.2, p_std=1.2))

  # Consistency distillation (docs/maths.md §2); the distance is consistency.distance.
  c.distill = ml_collections.ConfigDict(dict(
      num_levels=18,          # fixed N of the teacher's grid (CIFAR-10 18, ImageNet 64 / LSUN 40)
      solver="heun",          # heun | euler: the teacher's ODE step from s_{n+1} to s_n
      target_decay=0.0,       # target EMA mu (CIFAR-10 0 = stopgrad(theta); ImageNet / LSUN 0.95)
      weighting="uniform",    # lambda: uniform (CM's CD) | inverse_gap (iCT's 1 / (s_{n+1} - s_n))
  ))

  # Easy consistency tuning (docs/maths.md §6): starts from an EDM workdir (config.teacher).
  c.ect = ml_collections.ConfigDict(dict(
      p_mean=-1.1,            # t ~ LogNormal(p_mean, p_std) (ImageNet 64: -0.8, 1.6)
      p_std=2.0,
      q=2.0,                  # r = t (1 - q^-(a+1) (1 + k sigmoid(-b t))), clamped at >= 0
      k=8.0,
      b=1.0,
      stage_steps=25_000,     # the stage a grows by 1 every stage_steps
      huber_c=0.0,            # pseudo-Huber c (CIFAR-10 0); < 0: iCT's 0.00054 sqrt(d)
  ))

  # TrigFlow and continuous-time consistency models (docs/maths.md §7): trigflow | sct | scd.
  c.scm = ml_collections.ConfigDict(dict(
      p_mean=-1.0,            # tau ~ N(p_mean, p_std^2), t = arctan(exp(tau) / sigma_data)
      p_std=1.4,
      time_scale=1.0,         # network time input c_noise(t) = time_scale * t (1 or 1000)
      warmup_steps=10_000,    # tangent warm-up r = min(1, step / warmup_steps)
      tangent_norm_c=0.1,     # g <- g / (||g|| + c); < 0: no normalisation
      prior_weighting=False,  # sCT / sCD: the squared error weighted by 1 / (sigma_data tan t)
      adaptive_weight=True,   # learned w(t): loss exp(w)/D ||.||^2 - w (else w = 0)
      weight_hidden=64,       # width of the w(t) head
      two_step_t=1.1,         # the intermediate time of 2-step sampling
  ))

  # MeanFlow (Geng et al. 2025): the average velocity u(z, r, t) on z_t = (1 - t) x + t e.
  # Defaults: the paper's ImageNet ablation settings (CIFAR-10's are in configs/cifar10.py).
  c.meanflow = ml_collections.ConfigDict(dict(
      p_mean=-0.4,            # t, r ~ logit-normal: sigmoid(N(p_mean, p_std^2)), t = the larger
      p_std=1.0,
      ratio_r_neq_t=0.25,     # the fraction of samples with r != t (the rest: r = t, flow matching)
      norm_p=1.0,             # adaptive weight 1 / (||delta||^2 + norm_c)^norm_p (0: plain l2)
      norm_c=1e-3,
      time_scale=1.0,         # network time inputs time_scale * (t, t - r)
      two_step_t=0.5,         # 2-step sampling: 1 -> two_step_t -> 0
      cfg_omega=1.0,          # classifier-free guidance folded into the target (1: none)
      cfg_kappa=0.0,          # the conditional u's share of the guided velocity (paper's kappa)
      class_dropout=0.0,      # labels replaced by 'no class' (model.null_class) this often
  ))

  c.optim = ml_collections.ConfigDict(dict(
      name="radam",           # radam | adam
      learning_rate=4e-4,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      warmup_steps=0,
      decay="constant",       # constant | cosine | linear: after warm-up, down to
      final_lr_fraction=0.0,  # this fraction of learning_rate at train.num_steps
      grad_clip=0.0,          # global-norm clip; 0 = off
  ))

  c.ema_rate = 0.9999         # evaluation EMA, separate from the CT target network

  c.train = ml_collections.ConfigDict(dict(
      batch_size=512,         # global, over every device of every process
      grad_accum=1,           # K > 1: each batch as K micro-batches in the step (memory of B / K)
      num_steps=800_000,      # K of the curricula
      log_every=100,
      save_every=5000,
      keep_checkpoints=3,
      sample_every=10000,
      num_grid_samples=64,
      skip_nonfinite=False,   # True: a step with a non-finite loss or gradient is not applied
                              # (counted and logged); False: the run stops and names the step
  ))

  # Parallelism (docs/scaling.md). Pure data parallel by default; fsdp=K splits parameters,
  # optimizer state and EMA over an `fsdp` mesh axis of K devices (K divides the devices).
  c.parallel = ml_collections.ConfigDict(dict(fsdp=1))

  # Sampling (docs/maths.md §8): what the default run and `cm_jax.sample` without sigmas use.
  c.sample = ml_collections.ConfigDict(dict(
      two_step_sigma=0.821,   # the intermediate level of 2-step sampling
      clip=True,
      edm_levels=18,          # EDM workdirs: ODE solver levels (Heun: 2N-1 evaluations)
      edm_solver="heun",      # heun | euler
  ))

  c.eval = ml_collections.ConfigDict(dict(
      report_at_end=True,     # score 1- and 2-step samples when training finishes
      num_samples=0,          # 0 = as many as the held-out split; used by the end-of-run score
  ))
  return c
