"""python -m cm_jax.sample --workdir=W --steps=1 [--sigmas=80,2.5 | --ts=0,11,17 --ts_grid=18]
                         --num_samples=N --out=S.npz [--grid=G.png] [--checkpoint=latest|STEP]
                         [--labels=random|3|0,1,2,...]
An EDM workdir is sampled by an ODE solver instead: [--edm_levels=18] [--edm_solver=heun|euler].

Writes `arr_0`: uint8 [N, H, W, C] (the layout FID tools exchange) and, for a class-conditional
model, `arr_1`: int32 [N] labels (as the ADM sampler does). Sample i depends only on (--seed, i,
the levels, label i), not on the batch size or the device count.
"""
from __future__ import annotations

import jax
from absl import flags

from cm_jax import cli, files, images, sampling, sampling_flags
from cm_jax.errors import UserError

CHECKPOINT = sampling_flags.define_checkpoint_flags()
PLAN = sampling_flags.define_plan_flags()
DRAW = sampling_flags.define_draw_flags()
OUTPUT = sampling_flags.define_output_flags("samples")
_NUM = flags.DEFINE_integer("num_samples", 64, "How many samples.")
flags.adopt_module_key_flags(sampling_flags)  # --help lists the shared groups


def main() -> None:
  if _NUM.value < 1:
    raise UserError("--num_samples must be at least 1.")
  DRAW.check()
  OUTPUT.check()
  model = CHECKPOINT.load()
  exp = model.experiment
  plan = PLAN.resolve(exp.config, CHECKPOINT.workdir.value)
  labels = exp.resolve_labels(DRAW.parsed_labels(), _NUM.value, seed=DRAW.seed.value)
  samples = exp.generate(model.params, plan, _NUM.value, seed=DRAW.seed.value,
                         batch_size=DRAW.batch_size.value, labels=labels)
  if jax.process_index() == 0:
    out = OUTPUT.out.value
    files.write_npz_atomically(out, arr_0=samples,
                               **({} if labels is None else {"arr_1": labels}))
    how = (f"with {plan.solver} over {plan.num_levels} levels ({plan.nfe} evaluations)"
           if isinstance(plan, sampling.EDMPlan)
           else f"at {'times' if exp.plans_in_time else 'sigmas'} {plan}")
    print(f"Wrote {len(samples)} samples of checkpoint step {model.step} {how} to {out}")
    if OUTPUT.grid.value:
      images.save_png(OUTPUT.grid.value, images.make_grid(samples[:256]), scale=4)
      print(f"Grid: {OUTPUT.grid.value}")


if __name__ == "__main__":
  cli.run(main, distributed=True)  # several processes: launch/train.sh --cli
