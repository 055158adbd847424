"""The README's 2-step level sweeps on digits: the digit-feature figure of 1000 samples at one step
and at two steps through each given level (TrigFlow and MeanFlow models: times), same seed as
the report.

  python launch/two_step_sweep.py runs/digits_cd 0.5,0.821,1.5,2.5,5.0 [--no_clip]
"""
import sys

import cm_jax
from cm_jax import data
from cm_jax.evaluation import digit_features


def main(argv):
  if len(argv) < 3 or argv[3:] not in ([], ["--no_clip"]):
    sys.exit(__doc__)
  m = cm_jax.load(argv[1])
  if argv[3:] == ["--no_clip"]:
    m.config.sample.clip = False
  ref, held = (data.load_split(m.config.data, split) for split in ("train", "test"))
  net = digit_features.load_or_train(digit_features.default_cache_dir(), ref["image"], ref["label"])
  top = m.plan(steps=1)[0]

  def show(name, plan):
    r = digit_features.quality_report(net, m.sample(1000, sigmas=plan, seed=1), ref["image"],
                                      held["image"])
    print(f"{name:14s} frechet {r['frechet']:7.2f}  confidence {r['mean_confidence']:.3f}  "
          f"near-black {r['dark_fraction']:.3f}", flush=True)

  show("1 step", [top])
  for level in argv[2].split(","):
    show(f"2 steps @{level}", [top, float(level)])


if __name__ == "__main__":
  main(sys.argv)
