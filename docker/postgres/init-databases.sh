#!/bin/bash
# First start of the PostgreSQL volume: one database per service, each owned by its own login, so that MLflow's
# credentials cannot read or change Prefect's data (deployments, which the worker runs as code) and the other way round.
# Passwords come from the environment (docker/.env); psql quotes them (:'var'), so no quoting breaks the SQL.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
SQL
