"""dfd: a DAG-orchestrated MLOps pipeline for deepfake detectors.

The package holds what several stages share (config, manifest, face detection, datasets, metrics, the MLflow
service, alerts) and the `dfd` CLI. Stages live in `tasks/`, flows in `flows/`, architectures in `models/`.
"""

__version__ = "0.1.0"
