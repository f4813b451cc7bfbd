#!/usr/bin/env bash
# The whole test suite (unit, data, models, flows end to end) plus the linters and the docs build, in .venv.
# Prints the 15 slowest tests at the end, so the suite's time shows in every CI log (it should stay near 15 min).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Telemetry off: the suite never tries the network (tests/conftest.py sets the same for pytest's own process).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/lint-imports  # the import rules in pyproject.toml
# The documentation site: a broken link, anchor or API reference fails (NO_MKDOCS_2_WARNING: Material's banner).
# Not --quiet: it hides the warnings, and then --strict has none to fail on.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict
exec .venv/bin/python -m pytest -q --durations=15 "$@"
