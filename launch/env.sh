# Sourced by launch/*.sh: creates or reuses a virtual environment with cm_jax installed.
#   CM_JAX_VENV  where the environment lives (default: .venv in the repository)
#   PYTHON       the interpreter to build it from (default: python3.11, else python3; needs >= 3.11)
#   CM_JAX_EXTRAS  pip extras to install, e.g. "test"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CM_JAX_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
if [[ -z "$python_bin" ]]; then
  echo "error: no python3 found; install Python >= 3.11 or set PYTHON=/path/to/python3.11" >&2
  return 1 2>/dev/null || exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "error: $python_bin is $("$python_bin" --version 2>&1); cm_jax needs Python >= 3.11 (set PYTHON=...)" >&2
    return 1 2>/dev/null || exit 1
  fi
  echo "Creating the virtual environment $venv"
  "$python_bin" -m venv "$venv"
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
extras="${CM_JAX_EXTRAS:-}"
spec="$repo_root"; [[ -n "$extras" ]] && spec="$repo_root[$extras]"
# Reinstall only when pyproject.toml or the extras changed since the last install.
stamp="$venv/.cm_jax_installed"
want="$(cat "$repo_root/pyproject.toml" | sha256sum | cut -c1-16) $repo_root [$extras]"
if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
  echo "Installing cm_jax${extras:+[$extras]} into $venv"
  python -m pip install --quiet --disable-pip-version-check -e "$spec"
  echo "$want" > "$stamp"  # the last install only: another checkout's install replaced ours
fi
