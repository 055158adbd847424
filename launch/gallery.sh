#!/usr/bin/env bash
# The README's editing gallery: the default digits model (bash launch/train.sh first) edits
# held-out digits with each task of `python -m cm_jax.edit`; grids land in docs/gallery/.
#   bash launch/gallery.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
workdir="${1:-runs/digits_ict}"
out=docs/gallery
tmp="$(mktemp -d)"
mkdir -p "$out"
python - "$tmp/digits.npz" <<'PY'
import sys
import numpy as np
from configs import digits
from cm_jax import data, sampling
test = data.load_split(digits.get_config("method=ict").data, "test")
pick = np.concatenate([np.flatnonzero(test["label"] == d)[:1] for d in range(10)])
# arr_1: the digits' labels, which a class-conditional model edits under
np.savez(sys.argv[1], arr_0=sampling.to_uint8(test["image"][pick]), arr_1=test["label"][pick])
PY
edit() { python -m cm_jax.edit --workdir="$workdir" --out="$tmp/$1.npz" --grid="$out/$1.png" "${@:2}"; }
edit inpaint_center --task=inpaint --images="$tmp/digits.npz" --mask=center --sigmas=80,0.821
edit inpaint_strokes --task=inpaint --images="$tmp/digits.npz" --mask=strokes --sigmas=80,0.821
edit superres_x4 --task=superres --images="$tmp/digits.npz" --factor=4 --sigmas=80,0.821
edit denoise --task=denoise --images="$tmp/digits.npz" --noise_sigma=0.5
edit interpolate --task=interpolate --num_pairs=3 --num_alphas=8
rm -rf "$tmp"
ls -l "$out"
