#!/usr/bin/env bash
# Runs the test suite in the project's virtual environment (created and installed if needed).
#   bash launch/test.sh [pytest args]          the whole suite
#   bash launch/test.sh -m "not slow"          the fast tier
# Tests run in CM_JAX_TEST_WORKERS pytest-xdist processes (default: the CPU count, at most 4; 0 runs
# them in this process, e.g. for --pdb). One worker takes all of a module's tests, so module
# fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
CM_JAX_EXTRAS=test source launch/env.sh
cpus="$(nproc 2>/dev/null || echo 2)"
workers="${CM_JAX_TEST_WORKERS:-$(( cpus < 4 ? cpus : 4 ))}"
parallel=()
if [[ "$workers" != 0 ]]; then
  parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
fi
exec python -m pytest -q "${parallel[@]}" "$@"
