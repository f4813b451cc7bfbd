#!/usr/bin/env bash
# The whole test suite (unit, data, models, flows end to end) plus the linters and the docs build, in .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/lint-imports  # the import rules in pyproject.toml
# The documentation site: a broken link, anchor or API reference fails (NO_MKDOCS_2_WARNING: Material's banner).
# Not --quiet: it hides the warnings, and then --strict has none to fail on.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
exec .venv/bin/python -m pytest -q "$@"
