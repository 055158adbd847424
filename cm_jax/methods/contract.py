"""What every training method provides (`Method`) and what the rest of cm_jax may know about
each one (`MethodSpec`): one record per method instead of tables scattered over the package."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import jax


@runtime_checkable
class Method(Protocol):
  """A method as the train step, the loop and the Experiment use it.

  `loss` is differentiated with respect to `params`; `frozen` holds read-only parameters the
  method needs besides its own (a distillation teacher's EMA), None when `uses_teacher` is False.
  """
  has_target_network: bool  # a target network (CT's EMA theta^-) is carried in the train state
  uses_teacher: bool        # `loss` queries a teacher: the loop passes its parameters as `frozen`

  def loss(self, params, target_params, batch: dict, rng: jax.Array, step,
           frozen: Optional[Any] = None) -> tuple[jax.Array, dict]:
    """(scalar loss, {name: scalar} logged with it) for one batch {"image", "label"?}."""

  def update_target(self, target_params, params, step):
    """The target network after a step (returned unchanged when there is none)."""

  def schedule(self, step) -> dict[str, float]:
    """Host-side values of the curriculum at `step`, for the logs."""

  def extra_params(self, rng: jax.Array) -> dict:
    """Trained parameters besides the network's (sCM's weighting head), merged in at init."""


class NoTargetNetwork:
  """The Method pieces of a method with no target network, no curriculum to log and no
  parameters besides the network's (EDM, TrigFlow, MeanFlow); a method overrides what it has."""
  has_target_network = False

  def update_target(self, target_params, params, step):
    del params, step
    return target_params

  def schedule(self, step) -> dict[str, float]:
    del step
    return {}

  def extra_params(self, rng) -> dict:
    del rng
    return {}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  name: str
  create: Callable[..., Method]  # (config, net, sample_shape) -> Method
  # "consistency": a consistency function f(x, s), sampled in 1 or a few steps;
  # "denoiser": a denoiser or velocity network, sampled by an ODE solver (sampling.EDMPlan)
  kind: str
  # "sigma": EDM's noise levels (karras.py); "trigflow": TrigFlow time t in [0, pi/2];
  # "flow": the linear path z_t = (1 - t) x + t e, t in [0, 1] (flow.py, MeanFlow)
  time: str
  # "none" | "optional" (may start from a trained workdir) | "required" (--config.teacher)
  teacher: str = "none"
  teacher_method: Optional[str] = None  # the method the teacher workdir must hold
  summary: str = ""

  def __post_init__(self):
    if self.kind not in ("consistency", "denoiser"):
      raise ValueError(f"{self.name}: kind must be consistency or denoiser, got {self.kind!r}")
    if self.time not in ("sigma", "trigflow", "flow"):
      raise ValueError(f"{self.name}: time must be sigma, trigflow or flow, got {self.time!r}")
    if (self.teacher == "none") != (self.teacher_method is None):
      raise ValueError(f"{self.name}: teacher_method goes with teacher optional/required")
    if self.teacher not in ("none", "optional", "required"):
      raise ValueError(f"{self.name}: teacher must be none, optional or required")

  @property
  def is_denoiser(self) -> bool:
    return self.kind == "denoiser"

  @property
  def is_trigflow(self) -> bool:
    return self.time == "trigflow"

  @property
  def is_flow(self) -> bool:
    return self.time == "flow"

  @property
  def plans_in_time(self) -> bool:
    """Consistency plans are decreasing times (TrigFlow, flow), not EDM sigmas."""
    return self.time != "sigma"
