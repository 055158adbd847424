#!/usr/bin/env bash
# Trains locally. With no arguments: the offline default (iCT on the bundled digits), then a
# checkpoint, a grid of 1- and 2-step samples and their quality figure.
#   bash launch/train.sh [--config=configs/X.py:method=M] [--workdir=DIR] [--config.a.b=v ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
config="configs/digits.py:method=ict"
workdir="runs/digits_ict"
args=()
for arg in "$@"; do
  case "$arg" in
    --config=*) config="${arg#--config=}" ;;
    --workdir=*) workdir="${arg#--workdir=}" ;;
    *) args+=("$arg") ;;
  esac
done
echo "Training --config=$config --workdir=$workdir"
exec python -m cm_jax.train --config="$config" --workdir="$workdir" "${args[@]+"${args[@]}"}"
