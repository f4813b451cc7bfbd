"""Using a trained ensemble: scoring face crops with its members (`ensemble`) and the MLflow pyfunc that the
registry serves (`pyfunc_model`, logged as code)."""
