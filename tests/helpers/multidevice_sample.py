"""Run in a subprocess with 8 forced CPU devices: the same samples on 1 and on 8 devices.

(The edit CLI's 1- vs 8-device check lives in tests/test_edit_cli.py.)
"""
import json

import jax
import numpy as np

from cm_jax import parallel
from cm_jax.train.experiment import Experiment
from configs import digits
from tests.helpers.params import random_params

assert jax.device_count() == 8, jax.devices()
config = digits.get_config("method=ict,runlocal")
config.model.class_conditional = True  # labels drawn per sample must not depend on sharding

samples = {}
for devices in (1, 8):
  exp = Experiment.from_config(config, parallel.create_mesh(jax.devices()[:devices]))
  # 11 samples in batches of 5 (8 on 8 devices): padded last batches, different batch sizes.
  samples[devices] = exp.generate(random_params(exp), [80.0, 2.5], 11, seed=3, batch_size=5)

s1, s8 = samples[1], samples[8]
print(json.dumps({"samples_equal": bool(np.array_equal(s1, s8)),
                  "max_diff": int(np.abs(s1.astype(int) - s8.astype(int)).max()),
                  "sample_spread": float(s1.astype(float).std())}))
