"""Training methods by name: each module exposes `create(config, net, sample_shape)`."""
from cm_jax.methods import ct, ict

_REGISTRY = {"ct": ct.create, "ict": ict.create}
NAMES = tuple(_REGISTRY)


def create_method(config, net, sample_shape):
  if config.method not in _REGISTRY:
    raise ValueError(f"Unknown method {config.method!r}; this version has {', '.join(NAMES)}.")
  return _REGISTRY[config.method](config, net, sample_shape)
