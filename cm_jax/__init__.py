"""Consistency models in JAX/Flax. From Python: `cm_jax.load(WORKDIR)` (cm_jax/api.py)."""


def __getattr__(name):
  # Lazy, so that `python -m cm_jax.X` and light modules do not pay for the whole stack.
  if name in ("load", "Model"):
    from cm_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'cm_jax' has no attribute {name!r}")
