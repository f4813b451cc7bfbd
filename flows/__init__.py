"""The Prefect flows: they only wire the stages of `tasks/` (no stage logic here).

pipeline (the DAG, one MLflow parent run), stages (each stage as a task, retries and failure hooks), runners (task
runners: threads, Dask, Ray), train_process (a training task in its own process), deploy (deployments and the
weekly schedule), server (the temporary Prefect server of a `dfd run`), stage_inputs (what each stage depends on,
for the stage cache) and logs (Prefect logging for the CLI).
"""
