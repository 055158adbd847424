"""cm_jax from Python: a trained workdir as one object.

    import cm_jax
    m = cm_jax.load("runs/digits_ict")          # the latest checkpoint's evaluation EMA
    images = m.sample(64, steps=2)              # uint8 [64, H, W, C], as `cm_jax.sample` writes
    clean = m.denoise(noisy, sigma=0.5)         # one evaluation f(y, sigma), floats in [-1, 1]
    filled = m.edit(images, "inpaint", steps=2)  # CM Algorithm 4, uint8 as `cm_jax.edit` writes
    scores = m.evaluate(num_samples=1000)       # digits workdirs: the report's quality figures

Sample i depends only on (seed, i, the plan, label i), as in the CLIs, so `m.sample` and
`python -m cm_jax.sample` with the same arguments give the same images (`m.edit` and
`python -m cm_jax.edit` likewise).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import editing, edits, plans, sampling
from cm_jax.errors import UserError
from cm_jax.train import report, restore
from cm_jax.train.experiment import Experiment


@dataclasses.dataclass
class Model:
  """A restored workdir: its Experiment (config, network, noise levels) and one set of weights."""
  workdir: str
  experiment: Experiment
  params: Any
  step: int

  @property
  def config(self):
    return self.experiment.config

  @property
  def num_classes(self) -> int:
    return self.experiment.num_classes

  def plan(self, steps: Optional[int] = None, sigmas: Optional[Sequence[float]] = None):
    """The sampling plan, through the resolver every CLI uses (cm_jax.plans.resolve): explicit
    `sigmas` (TrigFlow and MeanFlow models: times), else `steps` (default 1; 2 steps: the
    searched level if any); a denoiser takes its configured ODE solver."""
    if sigmas is not None and steps is not None:
      raise UserError("Give steps or sigmas, not both.")
    levels = None if sigmas is None else [float(s) for s in sigmas]
    in_time = self.experiment.plans_in_time and not self.experiment.is_denoiser
    return plans.resolve(self.config, workdir=self.workdir, steps=steps,
                         sigmas=None if in_time else levels, times=levels if in_time else None)

  def sample(self, num_samples: int, steps: Optional[int] = None,
             sigmas: Optional[Sequence[float]] = None, seed: int = 0, labels=None,
             batch_size: int = 256) -> np.ndarray:
    """uint8 [num_samples, H, W, C]. labels: None / 'random' (drawn from the seed), one int for
    all, or one per sample (class-conditional models only)."""
    if num_samples < 1:
      raise UserError(f"num_samples={num_samples}: give at least 1.")
    return self.experiment.generate(self.params, self.plan(steps, sigmas), num_samples, seed=seed,
                                    batch_size=batch_size, labels=labels)

  def labels_for(self, count: int, labels=None, seed: int = 0) -> Optional[np.ndarray]:
    return self.experiment.resolve_labels(labels, count, seed=seed)

  def denoise(self, noisy, sigma: float, labels=None, seed: int = 0) -> np.ndarray:
    """f(noisy, sigma) for images that carry Gaussian noise of std `sigma` ([-1, 1] floats or
    uint8 [N, H, W, C]); float32 [N, H, W, C] in [-1, 1]."""
    exp = self.experiment
    if exp.is_denoiser or exp.is_trigflow:
      raise UserError("denoise evaluates a consistency function f(x, sigma): it needs a "
                      "consistency model in sigma (ct, ict, cd, ect) or a MeanFlow model.")
    x = np.asarray(noisy)
    x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.ndim != 4 or x.shape[1:] != tuple(exp.sample_shape):
      raise UserError(f"Images must be [N, {', '.join(map(str, exp.sample_shape))}], "
                      f"got {list(x.shape)}.")
    if not exp.levels.sigma_min <= sigma <= exp.levels.sigma_max:
      raise UserError(f"sigma={sigma} must lie in [{exp.levels.sigma_min}, "
                      f"{exp.levels.sigma_max}].")
    lab = self.labels_for(len(x), labels, seed)
    f = exp.consistency_fn(self.params, None if lab is None else jnp.asarray(lab))
    return np.asarray(jax.jit(lambda y: editing.denoise(f, y, float(sigma),
                                                        clip=bool(self.config.sample.clip)))(x))

  def edit(self, images, task: str, steps: Optional[int] = None,
           sigmas: Optional[Sequence[float]] = None, labels=None, seed: int = 0,
           batch_size: int = 256, **options) -> np.ndarray:
    """A zero-shot edit (cm_jax.edits.TASKS) of uint8 or [-1, 1] float images [N, H, W, C]
    (interpolate: pairs), at the levels of `steps` / `sigmas` in sigma (a MeanFlow model edits
    through its sigma-time consistency function); options: edits.Options (mask, factor,
    noise_sigma, add_noise, num_alphas). uint8 [M, H, W, C], as `cm_jax.edit` writes arr_0."""
    exp = self.experiment
    edits.check_model(exp, self.workdir)
    opts = edits.Options(**options)
    opts.check(task)
    if task == "denoise":
      if steps is not None or sigmas is not None:
        raise UserError("task='denoise' evaluates f once at noise_sigma; it takes no steps or "
                        "sigmas.")
      levels = None
    else:
      if steps is not None and sigmas is not None:
        raise UserError("Give steps or sigmas, not both.")
      levels = plans.resolve(self.config, workdir=self.workdir, steps=steps, sigmas=sigmas,
                             in_sigma=True)
    y = np.asarray(images)
    y = edits.to_float(y) if y.dtype == np.uint8 else y.astype(np.float32)
    count = len(y) // 2 if task == "interpolate" else len(y)
    result = edits.run(exp, self.params, task, y, levels, self.labels_for(count, labels, seed),
                       seed=seed, opts=opts, batch_size=batch_size)
    return sampling.to_uint8(result.edited)

  def evaluate(self, num_samples: int = 1000, seed: int = 1) -> dict:
    """Digits workdirs: {plan name: quality report} as the end-of-run report computes it (the
    digit-feature Frechet distance and the held-out floor). Other datasets: FID needs the
    Inception weights and reference statistics: use `python -m cm_jax.evaluate`."""
    if self.config.data.name != "digits":
      raise UserError(f"Model.evaluate scores digits workdirs; for {self.config.data.name!r} use "
                      "`python -m cm_jax.evaluate --workdir=... --ref=...` (FID / IS).")
    results, _ = report.score_digits(self.experiment, self.params, num_samples, seed=seed)
    return results


def load(workdir: str, checkpoint: str | int = "latest", params: str = "ema") -> Model:
  """A workdir's checkpoint (`latest` or a step) with its evaluation EMA (`ema`) or its online
  weights (`online`)."""
  if params not in ("ema", "online"):
    raise UserError(f"params (--params) must be 'ema' or 'online', got {params!r}.")
  if checkpoint != "latest" and not str(checkpoint).isdigit():
    raise UserError(f"checkpoint (--checkpoint) must be 'latest' or a step number, got "
                    f"{checkpoint!r}.")
  config = restore.workdir_config(workdir)
  step = None if checkpoint == "latest" else int(checkpoint)
  exp, state, _ = restore.restore_state(workdir, config, step)
  weights = state.ema_params if params == "ema" else state.params
  return Model(workdir=str(workdir), experiment=exp, params=weights, step=int(state.step))
