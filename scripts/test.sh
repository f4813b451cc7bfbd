#!/usr/bin/env bash
# The whole test suite (unit, data, models, flows end to end) plus the linter, in .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/lint-imports  # the import rules in pyproject.toml
exec .venv/bin/python -m pytest -q "$@"
