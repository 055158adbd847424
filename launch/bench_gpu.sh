#!/usr/bin/env bash
# The GPU check in one call (about 5-8 minutes on one GPU), with the machine's own Python:
#   1. CIFAR-10 CT, NCSN++ (56.4M parameters), float32, batch 128
#   2. ImageNet 64 CT, ADM UNet (296M parameters), bfloat16, batch 32 (the paper's per-GPU batch:
#      2048 over 64 GPUs); its peak_memory_bytes answers "does it fit in 40 GiB?"
#   3. Inception-feature throughput (random weights: the rate does not depend on them)
#   4. the digits default (iCT) trained to completion, and its quality figure
# Each bench writes the JSON of `python -m cm_jax.bench` (step_s, img_per_s_per_device,
# peak_fraction = MFU, peak_memory_bytes, sample_img_per_s, ...) to $OUT (if set) or
# runs/bench_gpu/; summary.txt holds one line per part.
#
#   bash launch/bench_gpu.sh [extra flags for both cm_jax.bench runs, e.g. --train_steps=20]
# Python: CM_JAX_PYTHON, else the machine's python3 as it is (jax with CUDA installed, no
# network needed). The wheels it lacks (launch/gpu_wheels.sh fetches them beforehand where PyPI
# is reachable, into .whl/ or CM_JAX_WHEELS) are installed with pip --no-index --no-deps
# --target into a temporary folder; that folder and this checkout go on PYTHONPATH.
# CIFAR_BATCH / IN64_BATCH override the batch sizes. BENCH_GPU_DRY_RUN=1 runs every part on the
# CPU with tiny stand-in configs and no backend check (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
out="${OUT:-runs/bench_gpu}"
mkdir -p "$out"
dry="${BENCH_GPU_DRY_RUN:-0}"
py="${CM_JAX_PYTHON:-python3}"
wheels="${CM_JAX_WHEELS:-.whl}"

site=""
if compgen -G "$wheels/*.whl" > /dev/null; then
  site="$(mktemp -d)/site"
  "$py" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
  echo "wheels: $(ls "$wheels"/*.whl | wc -l) from $wheels installed into $site"
fi
export PYTHONPATH="$repo${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
if ! missing="$("$py" -c 'import cm_jax.train.loop, cm_jax.bench, cm_jax.evaluation.bench_inception' 2>&1)"; then
  echo "$missing" | tail -1 >&2
  echo "error: $py cannot import cm_jax's dependencies; run 'bash launch/gpu_wheels.sh' on a" \
       "machine with PyPI and bring the .whl/ folder along (or set CM_JAX_PYTHON)." >&2
  exit 2
fi

if [[ "$dry" == 1 ]]; then
  export JAX_PLATFORMS=cpu
  echo "dry run on the CPU: tiny stand-in configs"
else
  backend="$("$py" -c 'import jax; print(jax.default_backend())')"
  if [[ "$backend" != "gpu" ]]; then
    echo "error: jax sees no GPU (backend: $backend); use a CUDA build of jax" \
         "(pip install -U \"jax[cuda12]\") or set CM_JAX_PYTHON." >&2
    exit 2
  fi
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"   # one GPU: the figures are per device
  export XLA_PYTHON_CLIENT_PREALLOCATE=false   # peak_bytes_in_use then reflects the step
fi
"$py" -c 'import jax; print("device:", jax.devices()[0].device_kind, "x", jax.device_count(), "| jax", jax.__version__)'

tiny="configs/digits.py:method=ct,runlocal"
bench() {  # name, config, batch, seconds, extra...
  local name="$1" config="$2" batch="$3" limit="$4"; shift 4
  local flags=(--train_steps=10 --sample_repeats=5)
  if [[ "$dry" == 1 ]]; then
    config="$tiny"; batch=4; flags=(--train_steps=1 --sample_repeats=1 --matmul_size=256 --config.model.channels=8)
  fi
  echo "== $name: $config, batch $batch"
  timeout "$limit" "$py" -m cm_jax.bench --config="$config" --batch_size="$batch" "${flags[@]}" \
      --json="$out/$name.json" "$@"
}
bench cifar10_ct_ncsnpp configs/cifar10.py:method=ct "${CIFAR_BATCH:-128}" 120 "$@"
bench imagenet64_ct_adm_bf16 configs/imagenet64.py:method=ct "${IN64_BATCH:-32}" 180 "$@"

echo "== Inception features"
inception=(--batch_size=256 --batches=8)
[[ "$dry" == 1 ]] && inception=(--batch_size=2 --batches=1)
timeout 60 "$py" -m cm_jax.evaluation.bench_inception "${inception[@]}" --notorch \
    | tee "$out/inception.txt"

echo "== the digits default (iCT), trained to completion"
digits="$(mktemp -d)/digits_ict"
config="configs/digits.py:method=ict"
[[ "$dry" == 1 ]] && config="$config,runlocal"
timeout 150 "$py" -m cm_jax.train --config="$config" --workdir="$digits" 2>&1 | tee "$out/digits_train.log"
cp "$digits"/eval/digits_quality_step*.json "$out/digits_quality.json"
cp "$digits"/samples/final_1step_2step_step*.png "$out/digits_samples.png"

"$py" - "$out" <<'PY' | tee "$out/summary.txt"
import json, os, re, sys
out = sys.argv[1]
for name in ("cifar10_ct_ncsnpp", "imagenet64_ct_adm_bf16"):
  r = json.load(open(os.path.join(out, name + ".json")))
  mem = r["peak_memory_bytes"] or 0
  print(f"{name}: {r['device']}, batch {r['batch_size']}, {r['params']:,} params, "
        f"step {r['step_s'] * 1e3:.1f} ms, {r['img_per_s_per_device']:.1f} img/s, "
        f"MFU {r['peak_fraction']:.1%}, peak memory {mem / 2**30:.2f} GiB "
        f"({'fits' if mem <= 40 * 2**30 else 'does NOT fit'} in 40 GiB), "
        f"1-step sampling {r['sample_img_per_s']:.0f} img/s")
rate = re.search(r"cm_jax \(Flax/XLA\):\s+([\d.]+) img/s", open(os.path.join(out, "inception.txt")).read())
print(f"inception features: {rate.group(1) if rate else '?'} img/s")
q = json.load(open(os.path.join(out, "digits_quality.json")))
print("digits default: " + ", ".join(f"{plan} Frechet {q[plan]['frechet']:.2f} (real floor "
                                      f"{q[plan]['frechet_real']:.2f})" for plan in ("1-step", "2-step")))
PY
