"""Run in a subprocess with 8 forced CPU devices: 3 train steps data-parallel vs FSDP.

Data parallel: a 1-D mesh of 8, the state replicated. FSDP (parallel.fsdp=4): a (2, 4) mesh,
every parameter, optimizer moment and EMA array split over the fsdp axis along its largest
4-divisible dimension. Same global batch, same seed: the same state to float32 rounding. Also:
a checkpoint written under FSDP restores under data parallel, and sampling takes FSDP weights.
"""
import json
import tempfile

import jax
import numpy as np

from cm_jax import checkpoint, parallel
from cm_jax.train.experiment import Experiment
from cm_jax.train.step import make_train_step
from configs import digits

assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
batch = {"image": rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32),
         "label": rng.integers(0, 10, 16).astype(np.int32)}

results, exps = {}, {}
for fsdp in (1, 4):
  config = digits.get_config("method=ict,runlocal")
  config.train.batch_size = 16
  config.parallel.fsdp = fsdp
  exp = Experiment.from_config(config)
  exps[fsdp] = exp
  state = exp.init_state(0)
  step = make_train_step(exp.method, exp.tx, float(config.ema_rate), exp.mesh,
                         state_sharding=exp.state_sharding())
  losses = []
  for _ in range(3):
    state, metrics = step(state, parallel.global_batch(batch, exp.mesh), None)
    losses.append(float(metrics["loss"]))
  results[fsdp] = (state, losses)

dp, fs = results[1][0], results[4][0]
leaves = jax.tree.leaves(fs.params)
split = [x for x in leaves if "fsdp" in str(x.sharding.spec)]
shard_fraction = (sum(x.addressable_shards[0].data.size for x in leaves)
                  / sum(x.size for x in leaves))
diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0))
                        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

# A checkpoint written under FSDP restores under data parallel (Orbax reshards on read).
with tempfile.TemporaryDirectory() as d:
  checkpoint.check_or_write_config(d, exps[4].config)
  ckpt = checkpoint.Checkpointer(d, async_save=False)
  ckpt.save(fs, {"step": 3})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(d, async_save=False)
  restored, _ = ckpt.restore(exps[1].abstract_state())
  ckpt.close()

samples_dp = exps[1].generate(dp.ema_params, [80.0], 4, seed=0)
samples_fs = exps[4].generate(fs.ema_params, [80.0], 4, seed=0)
print(json.dumps({
    "loss_dp": results[1][1], "loss_fsdp": results[4][1],
    "max_state_diff": diff(dp, fs),
    "split_leaves": len(split), "leaves": len(leaves), "shard_fraction": shard_fraction,
    "opt_split": sum("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(fs.opt_state)),
    "restored_diff": diff(restored, fs),
    "restored_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(restored)),
    "max_sample_diff": int(np.abs(samples_dp.astype(int) - samples_fs.astype(int)).max()),
}))
