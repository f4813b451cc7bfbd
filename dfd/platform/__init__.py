"""What every part of the pipeline stands on: the params schema, paths, errors, file I/O, the MLflow service, alerts.

The bottom layer: it imports nothing else from `dfd`, and it is the only part of `dfd` that `models/` may use.
"""
