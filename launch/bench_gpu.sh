#!/usr/bin/env bash
# Benchmarks the paper train steps and 1-step sampling on one GPU (about 3-5 minutes in all):
#   1. CIFAR-10 CT, NCSN++ (56.4M parameters), float32, batch 128
#   2. ImageNet 64 CT, ADM UNet (296M parameters), bfloat16, batch 32 (the paper's per-GPU batch:
#      2048 over 64 GPUs) -- its peak_memory_bytes answers "does it fit in 40 GiB?"
# Each writes a JSON of `python -m cm_jax.bench` (compile_s, step_s, img_per_s_per_device,
# flops_per_step, peak_flops, peak_fraction, peak_memory_bytes, sample_img_per_s, ...) to
# $OUT (if set) or runs/bench/, and a summary line per run at the end.
#
#   bash launch/bench_gpu.sh [extra flags for every cm_jax.bench run, e.g. --steps=20]
# CM_JAX_PYTHON=/path/to/python uses that interpreter (it needs jax with CUDA, e.g.
# `pip install -U "jax[cuda12]"`); otherwise launch/env.sh creates or reuses .venv.
# CIFAR_BATCH / IN64_BATCH override the batch sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${CM_JAX_PYTHON:-}" ]]; then
  py="$CM_JAX_PYTHON"
else
  # shellcheck disable=SC1091
  source launch/env.sh
  py=python
fi
out="${OUT:-runs/bench}"
mkdir -p "$out"

backend="$("$py" -c 'import jax; print(jax.default_backend())')"
if [[ "$backend" != "gpu" ]]; then
  echo "error: jax sees no GPU (backend: $backend); install a CUDA build of jax into this" \
       "environment (pip install -U \"jax[cuda12]\") or set CM_JAX_PYTHON." >&2
  exit 2
fi
"$py" -c 'import jax; print("device:", jax.devices()[0].device_kind, "x", jax.device_count())'

# One GPU: the benchmark is per device.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # peak_bytes_in_use then reflects the step

run() {  # name, config, batch, extra...
  local name="$1" config="$2" batch="$3"; shift 3
  echo "== $name: $config, batch $batch"
  timeout 240 "$py" -m cm_jax.bench --config="$config" --batch_size="$batch" --steps=10 \
      --sample_repeats=5 --json="$out/$name.json" "$@"
}

run cifar10_ct_ncsnpp configs/cifar10.py:method=ct "${CIFAR_BATCH:-128}" "$@"
run imagenet64_ct_adm_bf16 configs/imagenet64.py:method=ct "${IN64_BATCH:-32}" "$@"

"$py" - "$out" <<'EOF'
import json, sys, os
out = sys.argv[1]
for name in ("cifar10_ct_ncsnpp", "imagenet64_ct_adm_bf16"):
  r = json.load(open(os.path.join(out, name + ".json")))
  mem = r["peak_memory_bytes"] or 0
  print(f"{name}: {r['device']}, batch {r['batch_size']}, {r['params']:,} params, "
        f"step {r['step_s'] * 1e3:.1f} ms, {r['img_per_s_per_device']:.1f} img/s, "
        f"{r['peak_fraction']:.1%} of peak, peak memory {mem / 2**30:.2f} GiB "
        f"({'fits' if mem <= 40 * 2**30 else 'does NOT fit'} in 40 GiB), "
        f"1-step sampling {r['sample_img_per_s']:.0f} img/s")
EOF
