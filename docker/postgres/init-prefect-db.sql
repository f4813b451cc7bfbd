-- One PostgreSQL for the stack: MLflow uses the default database (POSTGRES_DB), Prefect its own.
CREATE DATABASE prefect;
