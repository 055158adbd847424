#!/usr/bin/env bash
# Downloads, on a machine with PyPI, the wheels that cm_jax needs and an offline GPU image lacks
# (that image has Python 3.12 with jax, flax, optax, orbax, chex, tensorstore, etils, numpy,
# scipy, scikit-learn, pillow, tqdm, absl-py and torch; not ml_collections, grain, TFDS,
# array_record or tensorboardX). launch/bench_gpu.sh installs what lies in the folder with
# `pip install --no-index --no-deps --target` and puts it on PYTHONPATH.
#   bash launch/gpu_wheels.sh [DIR]        (default .whl/, git-ignored)
# PYTHON_VERSION (default 3.12) and PLATFORMS choose the target; versions are those of this
# checkout's environment (launch/env.sh), so the GPU run uses what the test suite ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.whl}"
pyver="${PYTHON_VERSION:-3.12}"
if [[ -x "${CM_JAX_VENV:-.venv}/bin/python" ]]; then
  # shellcheck disable=SC1091
  source "${CM_JAX_VENV:-.venv}/bin/activate"   # as it is: the versions the suite ran with
else
  # shellcheck disable=SC1091
  source launch/env.sh
fi
# The missing packages and the dependencies of theirs the image does not hold either.
packages=(ml_collections grain array_record tensorflow-datasets importlib_resources tensorboardX
          dm-tree immutabledict promise simple-parsing docstring-parser tensorflow-metadata
          googleapis-common-protos termcolor toml portpicker)
pinned=()
for p in "${packages[@]}"; do
  v="$(python -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$p" 2>/dev/null || true)"
  pinned+=("${p}${v:+==$v}")
done
platforms=()
for p in ${PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64}; do
  platforms+=(--platform "$p")
done
mkdir -p "$dest"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
for spec in "${pinned[@]}"; do
  if ! python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version "$pyver" --implementation cp "${platforms[@]}" -d "$dest" "$spec" 2> "$tmp/err"; then
    # Pure-Python packages published only as source (promise): build a py3-none-any wheel here.
    python -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: -d "$tmp" "$spec"
    python -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$dest" "$tmp"/*.tar.gz
    rm -f "$tmp"/*.tar.gz
  fi
done
ls -1 "$dest"
echo "$(ls "$dest" | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
