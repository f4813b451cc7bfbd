#!/usr/bin/env bash
# The main job on the embedded defaults: build .venv, generate the demo dataset, run the whole DAG through Prefect
# (ephemeral server) with MLflow on sqlite:///mlflow.db, and print the registered version and how to browse it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dfd demo "$@"
