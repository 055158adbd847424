"""Training methods by name: one `MethodSpec` each (contract.py), the only table of them."""
from cm_jax.errors import UserError
from cm_jax.methods import cd, ct, ect, edm, ict, meanflow, scm
from cm_jax.methods.contract import Method, MethodSpec

SPECS = {s.name: s for s in (
    MethodSpec("ct", ct.create, "consistency", "sigma", teacher="optional", teacher_method="edm",
               # the PyTorch release started its ImageNet 64 / LSUN CT runs from the EDM teacher
               summary="consistency training (Song et al. 2023), EMA target network"),
    MethodSpec("ict", ict.create, "consistency", "sigma",
               summary="improved consistency training (Song & Dhariwal 2023)"),
    MethodSpec("edm", edm.create, "denoiser", "sigma",
               summary="EDM denoiser (Karras et al. 2022): the CD and ECT teacher"),
    MethodSpec("cd", cd.create, "consistency", "sigma", teacher="required", teacher_method="edm",
               summary="consistency distillation from an EDM teacher"),
    MethodSpec("ect", ect.create, "consistency", "sigma", teacher="required",
               teacher_method="edm",  # starts from the EDM weights; not queried in the loss
               summary="easy consistency tuning (Geng et al. 2024) of an EDM model"),
    MethodSpec("trigflow", scm.create_trigflow, "denoiser", "trigflow",
               summary="TrigFlow diffusion (Lu & Song 2024): the sCD teacher"),
    MethodSpec("sct", scm.create_sct, "consistency", "trigflow",
               summary="continuous-time consistency training (sCM)"),
    MethodSpec("scd", scm.create_scd, "consistency", "trigflow", teacher="required",
               teacher_method="trigflow",
               summary="continuous-time consistency distillation from a TrigFlow teacher"),
    MethodSpec("meanflow", meanflow.create, "consistency", "flow",
               summary="MeanFlow (Geng et al. 2025): the average velocity, 1 step from scratch"),
)}
NAMES = tuple(SPECS)
# Views of SPECS that callers test membership in.
DENOISERS = tuple(n for n, s in SPECS.items() if s.is_denoiser)
TRIGFLOW = tuple(n for n, s in SPECS.items() if s.is_trigflow)
TEACHERS = {n: s.teacher_method for n, s in SPECS.items() if s.teacher == "required"}
OPTIONAL_TEACHERS = {n: s.teacher_method for n, s in SPECS.items() if s.teacher == "optional"}

__all__ = ["Method", "MethodSpec", "SPECS", "NAMES", "DENOISERS", "TRIGFLOW", "TEACHERS",
           "OPTIONAL_TEACHERS", "spec", "create_method"]


def spec(name: str) -> MethodSpec:
  if name not in SPECS:
    raise UserError(f"Unknown method {name!r}; this version has {', '.join(NAMES)}.")
  return SPECS[name]


def create_method(config, net, sample_shape) -> Method:
  method = spec(config.method).create(config, net, sample_shape)
  if not isinstance(method, Method):
    raise TypeError(f"method {config.method!r} does not provide the Method contract "
                    "(cm_jax/methods/contract.py)")
  return method
