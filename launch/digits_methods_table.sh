#!/usr/bin/env bash
# The README's methods table on the digits default: CT, iCT, ECT, CD, sCT, sCD and MeanFlow with equal
# budgets, scored by the project's digit-feature Frechet distance at 1 and 2 steps, beside the two
# teachers (EDM for CD and ECT, TrigFlow for sCD) sampled by Heun over 18 levels (35 evaluations).
#
# "Equal" = the digits recipe for every consistency model: the same class-conditional tiny UNet
# (0.87M parameters), batch 64 and 2000 training steps. The teachers are trained once, outside
# that budget, each for 2400 steps (one network evaluation a step, about the minutes of iCT's
# 2000): CD and sCD query theirs in every step; ECT and sCD start from their teacher's weights,
# CD from the EDM's. Per step, the methods cost different numbers of network evaluations (CT /
# iCT / ECT: 1 forward + 1 forward-backward; CD: + 2 teacher evaluations (Heun); sCT: + 1 jvp;
# sCD: + 1 teacher + 1 jvp; MeanFlow: 1 jvp + 1 forward-backward). ECT is also scored at steps
# 500, 1000 and 1500 (its checkpoints), to show how soon it gets there.
#
#   bash launch/digits_methods_table.sh [extra --config.a.b=v overrides for every run]
# A finished workdir is reused (training it again is a no-op resume; its scores are cached), so
# the runs of launch/digits_table.sh are shared. Logs: runs/digits_<method>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh

train() {  # train NAME [flags...]: runs/digits_NAME, unless it already holds its final scores
  local name=$1; shift
  if compgen -G "runs/digits_$name/eval/digits_quality_step*.json" > /dev/null; then
    echo "runs/digits_$name: finished, reusing it"
    return
  fi
  echo "Training runs/digits_$name (log: runs/digits_$name.log)"
  python -m cm_jax.train --config="configs/digits.py:method=$name" --workdir="runs/digits_$name" \
    "$@" > "runs/digits_$name.log" 2>&1
}

mkdir -p runs
train edm "$@"
train trigflow "$@"
train ct "$@"
train ict "$@"
train cd --config.teacher=runs/digits_edm "$@"
train ect --config.teacher=runs/digits_edm "$@"
train sct "$@"
train scd --config.teacher=runs/digits_trigflow "$@"
train meanflow "$@"

python -m cm_jax.train.report runs/digits_ct runs/digits_ict runs/digits_ect@500 \
  runs/digits_ect@1000 runs/digits_ect@1500 runs/digits_ect runs/digits_cd runs/digits_sct \
  runs/digits_scd runs/digits_meanflow runs/digits_edm runs/digits_trigflow
