"""Training methods by name: each module exposes `create(config, net, sample_shape)`."""
from cm_jax.methods import cd, ct, edm, ict

_REGISTRY = {"ct": ct.create, "ict": ict.create, "edm": edm.create, "cd": cd.create}
NAMES = tuple(_REGISTRY)
# Methods whose network is a denoiser D(x, s), sampled by an ODE solver; the rest train a
# consistency function f(x, s).
DENOISERS = ("edm",)


def create_method(config, net, sample_shape):
  if config.method not in _REGISTRY:
    raise ValueError(f"Unknown method {config.method!r}; this version has {', '.join(NAMES)}.")
  return _REGISTRY[config.method](config, net, sample_shape)
