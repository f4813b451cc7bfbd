#!/bin/bash
# First start of the PostgreSQL volume: one database per service, each owned by its own login, so that MLflow's
# credentials cannot read or change Prefect's data (deployments, which the worker runs as code) and the other way round.
# Passwords come from the environment (docker/.env); psql quotes them (:'var'), so no quoting breaks the SQL.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'mlflow_pw';
CREATE ROLE prefect LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'prefect_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- PUBLIC (every role, present and future) may connect to any database and make temporary tables unless revoked.
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
-- The `public` schema: owned by the service (its tables live there), closed to everyone else. PostgreSQL 15+ does
-- this by default; said here so that an older server does too.
\connect mlflow
ALTER SCHEMA public OWNER TO mlflow;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
\connect prefect
ALTER SCHEMA public OWNER TO prefect;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SQL
