"""Run in a subprocess with 8 forced CPU devices: for each method named on the command line, three
train steps on 1 device vs on 8 devices; one JSON line of results per method."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from cm_jax import parallel
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step
from configs import digits
from tests.helpers.per_example_noise import ID_KEY, PerExampleNoise

assert jax.device_count() == 8, jax.devices()


def compare(method: str) -> dict:
  config = digits.get_config(f"method={method},runlocal")
  config.train.batch_size = 16
  config.model.dropout = 0.1  # dropout keys must not depend on the sharding either
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}

  results = {}
  for devices in (1, 8):
    mesh = parallel.create_mesh(jax.devices()[:devices])
    exp = Experiment.from_config(config, mesh)
    state = exp.init_state(0)
    # CD: a stand-in teacher of the same network, passed as the replicated, non-donated `frozen`
    # (reused every step: a donated one would be deleted after the first).
    frozen = jax.tree.map(jnp.copy, state.ema_params) if exp.method.uses_teacher else None
    step = make_train_step(exp.method, exp.tx, float(config.ema_rate), mesh)
    losses = []
    for _ in range(3):
      state, metrics = step(state, parallel.global_batch(batch, mesh), frozen)
      losses.append(float(metrics["loss"]))
    # N(k) and mu(k) change with the step inside the trace: the step must compile once.
    assert step._cache_size() == 1, step._cache_size()
    leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    ema = [np.asarray(x) for x in jax.tree.leaves(state.ema_params)]
    results[devices] = (losses, leaves, ema, int(state.step))

  (l1, p1, e1, s1), (l8, p8, e8, s8) = results[1], results[8]
  assert s1 == s8 == 3
  max_param = max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p8))
  max_ema = max(float(np.max(np.abs(a - b))) for a, b in zip(e1, e8))
  out = {"loss_1": l1, "loss_8": l8, "max_param_diff": max_param, "max_ema_diff": max_ema}

  if method == "ict":
    # train.grad_accum on 8 devices: 2 micro-batches of 8 rows (one per device) against the batch.
    mesh = parallel.create_mesh()
    exp = Experiment.from_config(config, mesh)
    ids = dict(batch, **{ID_KEY: np.arange(16, dtype=np.int32)})
    params = {}
    for k in (1, 2):
      step = make_train_step(PerExampleNoise(exp.method), exp.tx, float(config.ema_rate), mesh,
                             grad_accum=k)
      state, _ = step(exp.init_state(0), parallel.global_batch(ids, mesh), None)
      params[k] = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    out["max_grad_accum_diff"] = max(float(np.max(np.abs(a - b)))
                                     for a, b in zip(params[1], params[2]))
  return out


for name in sys.argv[1:]:
  print(json.dumps(dict(compare(name), method=name)), flush=True)
