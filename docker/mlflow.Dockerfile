# The MLflow tracking server and model registry: PostgreSQL backend, artifacts on S3 (MinIO), basic auth.
FROM python:3.11.13-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# The same MLflow as the pipeline (pyproject.toml resolves to it) with its basic-auth app's extra (Flask-WTF: without
# it `--app-name basic-auth` does not start), the PostgreSQL driver and boto3 for S3.
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.10" "boto3>=1.34,<2"

WORKDIR /opt/mlflow
COPY mlflow/start_server.sh ./mlflow/start_server.sh
COPY mlflow/create_reader.py ./mlflow/create_reader.py
COPY mlflow/dfd_mlflow_auth.py ./mlflow/dfd_mlflow_auth.py
COPY docker/mlflow/basic_auth.ini ./basic_auth.ini
RUN useradd --create-home --uid 1000 mlflow && mkdir -p /var/lib/mlflow-auth && chown mlflow:mlflow /var/lib/mlflow-auth
USER 1000:1000

ENV MLFLOW_AUTH_CONFIG_PATH=/opt/mlflow/basic_auth.ini MLFLOW_HOST=0.0.0.0 MLFLOW_PORT=5000
EXPOSE 5000
ENTRYPOINT ["bash", "mlflow/start_server.sh"]
