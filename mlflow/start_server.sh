#!/usr/bin/env bash
# Start the MLflow tracking server and model registry.
#
# Embedded default: a sqlite store and local artifacts beside this repo. Team setup: point the backend at
# PostgreSQL and the artifacts at S3 (or MinIO) through the environment, e.g.
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:***@db:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://mlflow-artifacts MLFLOW_S3_ENDPOINT_URL=http://minio:9000 \
#   mlflow/start_server.sh
# Credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the database password) stay in the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${here}/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-${here}/mlartifacts}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
# The auth app's authorization function (docker/mlflow/basic_auth.ini) lives beside this script: mlflow/dfd_mlflow_auth.py.
export PYTHONPATH="${here}/mlflow${PYTHONPATH:+:${PYTHONPATH}}"
echo "MLflow server on http://${host}:${port} (backend ${backend%%://*}://..., artifacts ${artifacts})"
# --serve-artifacts: clients upload through the server, so they need no S3 credentials of their own.
exec mlflow server --backend-store-uri "$backend" --artifacts-destination "$artifacts" --serve-artifacts \
  --host "$host" --port "$port" --workers "$workers" ${MLFLOW_SERVER_EXTRA_ARGS:-}
