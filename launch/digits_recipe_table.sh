#!/usr/bin/env bash
# The README's "what moved the figure" table: the default iCT recipe on digits and the changes
# measured against it, one workdir each under runs/digits_recipe/, scored on 1000 samples. The rows
# up to `default` lead to today's recipe (the first ones unconditional); the rows after it each
# change one thing of the default.
# About 5 minutes a row on 2 idle cores; a finished workdir is reused.
#   bash launch/digits_recipe_table.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
root=runs/digits_recipe
uncond=(--config.model.class_conditional=False)
previous=("${uncond[@]}" --config.model.num_res_blocks=2 --config.train.batch_size=128
          --config.train.num_steps=1000 --config.model.fourier_scale=0.02)
# 1 block, batch 64, 2000 steps, the old scale
steps_first=("${uncond[@]}" --config.model.fourier_scale=0.02)
declare -A rows=(
  [previous]="${previous[*]}"
  [previous_cosine]="${previous[*]} --config.optim.decay=cosine"
  [steps_first]="${steps_first[*]}"
  [no_attention]="${steps_first[*]} --config.model.attn_resolutions=() --config.train.num_steps=2400"
  [batch32]="${steps_first[*]} --config.train.batch_size=32 --config.train.num_steps=3600"
  [dropout]="${steps_first[*]} --config.model.dropout=0.2"
  [fourier05]="${uncond[*]} --config.model.fourier_scale=0.5"
  [sigma_max20]="${steps_first[*]} --config.karras.sigma_max=20.0"
  [p_mean]="${steps_first[*]} --config.consistency.p_mean=-0.5"
  [unconditional]="${uncond[*]}"
  [fourier0002]="${uncond[*]} --config.model.fourier_scale=0.002"
  [default]=""
  [seed1]="--config.seed=1"
  [sigma_data075]="--config.karras.sigma_data=0.75"
  [ema0998]="--config.ema_rate=0.998"
  [ema099]="--config.ema_rate=0.99"
  [s1_320]="--config.consistency.s1=320"
  [s1_80]="--config.consistency.s1=80"
  [lr2e3]="--config.optim.learning_rate=2e-3"
  [b2_099]="--config.optim.b2=0.99"
  [p_mean15]="--config.consistency.p_mean=-1.5"
)
order=(previous previous_cosine steps_first no_attention batch32 dropout fourier05 sigma_max20 p_mean
       unconditional fourier0002 default seed1 sigma_data075 ema0998 ema099 s1_320 s1_80 lr2e3
       b2_099 p_mean15)
mkdir -p "$root"
for name in "${order[@]}"; do
  w="$root/$name"
  if compgen -G "$w/eval/digits_quality_step*.json" > /dev/null; then continue; fi
  echo "Training $w (log: $w.log)"
  # shellcheck disable=SC2086  # the overrides are words
  python -m cm_jax.train --config=configs/digits.py:method=ict --workdir="$w" ${rows[$name]} \
    > "$w.log" 2>&1
done
python -m cm_jax.train.report "${order[@]/#/$root/}"
