#!/usr/bin/env bash
# Runs the test suite in the project's virtual environment (created and installed if needed).
#   bash launch/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
CM_JAX_EXTRAS=test source launch/env.sh
exec python -m pytest -q "$@"
