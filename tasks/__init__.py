"""The pipeline stages, one module per DAG node: each holds the pure stage function and its `run()`.

ingest, faces, train, ensemble, evaluate (with eval_datasets), register (gate, aliases, rollback), compare (`dfd
compare`) and preflight (checks before a run). They know nothing of Prefect; `flows/` wires them, `dvc.yaml` runs them
as `dfd stage NAME`.
"""
