#!/usr/bin/env bash
# The README's digits table: CT and iCT with the same budget (steps, batch, network), scored by
# the project's digit-feature Frechet distance at 1 and 2 steps.
#   bash launch/digits_table.sh [extra --config.a.b=v overrides for both runs]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
for method in ict ct; do
  python -m cm_jax.train --config="configs/digits.py:method=$method" \
    --workdir="runs/digits_$method" "$@"
done
python -m cm_jax.train.report runs/digits_ict runs/digits_ct
