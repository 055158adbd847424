"""Training methods by name: each module exposes `create(config, net, sample_shape)`."""
from cm_jax.errors import UserError
from cm_jax.methods import cd, ct, ect, edm, ict, scm

_REGISTRY = {"ct": ct.create, "ict": ict.create, "edm": edm.create, "cd": cd.create,
             "ect": ect.create, "trigflow": scm.create_trigflow, "sct": scm.create_sct,
             "scd": scm.create_scd}
NAMES = tuple(_REGISTRY)
# Methods whose network is a denoiser (EDM's D(x, s), TrigFlow's velocity), sampled by an ODE
# solver (sampling.EDMPlan); the rest train a consistency function, sampled in 1 or a few steps.
DENOISERS = ("edm", "trigflow")
# Methods in TrigFlow time t in [0, pi/2] (trigflow.py): their consistency plans are times, not
# sigmas, and their ODE plans run trigflow.ode_sample; the rest use the sigma parameterisation.
TRIGFLOW = ("trigflow", "sct", "scd")
# Methods that need a trained workdir (`config.teacher`), and the method that workdir must hold.
# CD and sCD query their teacher in the loss; ECT only starts from it.
TEACHERS = {"cd": "edm", "ect": "edm", "scd": "trigflow"}
# Methods that may start from such a workdir when one is given (the PyTorch release started its
# ImageNet 64 / LSUN CT runs from the EDM teacher: configs/*.py variant=release).
OPTIONAL_TEACHERS = {"ct": "edm"}


def create_method(config, net, sample_shape):
  if config.method not in _REGISTRY:
    raise UserError(f"Unknown method {config.method!r}; this version has {', '.join(NAMES)}.")
  return _REGISTRY[config.method](config, net, sample_shape)
