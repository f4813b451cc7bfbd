#!/usr/bin/env bash
# Refresh requirements.lock: every package (direct and transitive) that `pip install -e '.[dev,onnx]'` resolves to
# today, pinned with its hashes. Run it after changing a dependency range in pyproject.toml (tests/unit/test_lock.py
# fails until the two agree), review the diff, rerun `bash scripts/test.sh`, and commit both files together.
# pip-tools runs in a throwaway venv so that its own pins never touch .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3.11}"
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
"$PYTHON" -m venv "$tools"
"$tools/bin/python" -m pip install --quiet "pip-tools==7.7.0"
# --strip-extras: pip's hash-checking mode refuses a requirement with extras; the extras' packages are listed anyway.
"$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras --extra dev --extra onnx \
  --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml
echo "requirements.lock refreshed: review 'git diff requirements.lock', then run bash scripts/test.sh"
