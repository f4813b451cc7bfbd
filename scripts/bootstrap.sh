#!/usr/bin/env bash
# Create .venv with the project and its dev tools, once; later calls reuse it (reinstalling only when
# pyproject.toml or requirements.lock changed). Needs only Python 3.11 and pip.
#
# It installs the exact versions of requirements.lock (hash-checked), so that an install made on any day gives the
# same results; `DFD_UNLOCKED=1 bash scripts/bootstrap.sh` instead installs the newest releases that pyproject.toml's
# ranges allow (how to try tomorrow's releases before refreshing the lock with scripts/lock.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "dfd needs Python 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
mode="locked"
[ -n "${DFD_UNLOCKED:-}" ] && mode="unlocked"
stamp=".venv/.installed-$mode-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -d .venv ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  echo "Installing dfd and its dependencies into .venv (torch, MLflow, Prefect, DVC...: a few minutes the first time)"
  if [ "$mode" = locked ]; then
    # The lock lists every package with its hashes; the project itself then goes in without resolving again.
    .venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
    .venv/bin/python -m pip install --quiet --no-deps -e .
  else
    .venv/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev,onnx]'
  fi
  rm -f .venv/.installed-* && touch "$stamp"
fi
