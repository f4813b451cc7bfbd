"""The served ensemble: an MLflow pyfunc model over the member checkpoints and the fitted weights.

Input: RGB uint8 face crops, shape (N, H, W, 3), as the faces stage writes them (any square size: each member
resizes and normalises with its own registered config). Output: P(fake), float32 (N,).

Logged as "models from code": MLflow stores this file and runs it at load time (the `set_model` call below), so the
served model is source anyone can read, not a cloudpickled object tied to one Python and library version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np


class DeepfakeEnsembleModel(mlflow.pyfunc.PythonModel):
    """Weighted average of the member detectors' probabilities."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from dfd.serving.ensemble import EnsemblePredictor

        spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        checkpoints = {m: Path(context.artifacts[f"member_{m}"]) for m in spec["members"]}
        self.threshold = float(spec.get("val_eer_threshold", 0.5))
        self.predictor = EnsemblePredictor.from_spec(spec, checkpoints)

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        crops = np.asarray(model_input)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected RGB crops of shape (N, H, W, 3), got {crops.shape}")
        return self.predictor(crops.astype(np.uint8)).astype(np.float32)


# Models from code: MLflow executes this file when loading the model and serves what is set here.
mlflow.models.set_model(DeepfakeEnsembleModel())
