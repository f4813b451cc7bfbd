"""The served ensemble: an MLflow pyfunc model over the member checkpoints and the fitted weights.

Input, either:
- RGB uint8 face crops, shape (N, H, W, 3), as the faces stage writes them (any square size: each member resizes and
  normalises with its own registered config). Output: P(fake), float32 (N,).
- Media: a pandas DataFrame with a `path` column (image or video files) or a `content` column (their bytes, or the
  bytes base64-encoded as text, which is how JSON carries them to `mlflow models serve`; an optional `name` column
  gives the file type). Faces are extracted as the faces stage did (its params travel with the model as the `faces`
  artifact), scored, and aggregated per file. Output: a DataFrame with one row per input
  (`dfd.serving.media_scoring.RESULT_COLUMNS`: path, p_fake, label, status, frames, faces, tracks, reason, detail).
  `mlflow.pyfunc.load_model(uri).predict(df)` takes both: the model is logged without a signature, since MLflow's
  schemas cannot say "crops or media" (see `Tracker.log_pyfunc_model`); `predict` checks the input itself.

Logged as "models from code": MLflow stores this file and runs it at load time (the `set_model` call below), so the
served model is source anyone can read, not a cloudpickled object tied to one Python and library version.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd


class DeepfakeEnsembleModel(mlflow.pyfunc.PythonModel):
    """Weighted average of the member detectors' probabilities, on crops or on media files."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from dfd.serving.ensemble import EnsemblePredictor
        from dfd.serving.media_scoring import MediaScorer

        self.spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        checkpoints = {m: Path(context.artifacts[f"member_{m}"]) for m in self.spec["members"]}
        self.checkpoints = checkpoints  # what heatmaps rebuild a differentiable ensemble from (dfd.serving.heatmaps)
        self.threshold = float(self.spec.get("threshold", self.spec.get("val_eer_threshold", 0.5)))
        self.predictor = EnsemblePredictor.from_spec(self.spec, checkpoints)
        faces = context.artifacts.get("faces")
        # The faces params the training crops were made with; a model registered without them scores crops only.
        self.faces_cfg = json.loads(Path(faces).read_text())["params"] if faces else None
        self.scorer = MediaScorer(self.predictor, self.spec, self.faces_cfg) if self.faces_cfg else None

    # No type hints on the input: MLflow would try to validate the input against them (crops or a DataFrame).
    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        if isinstance(model_input, pd.DataFrame) and ({"path", "content"} & set(model_input.columns)):
            return self.predict_media(model_input, (params or {}).get("aggregate"))
        crops = np.asarray(model_input)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected RGB uint8 face crops of shape (N, H, W, 3), got shape {crops.shape}; or, for "
                             "image and video files, a DataFrame with a `path` or a `content` column")
        return self.predictor(crops.astype(np.uint8)).astype(np.float32)

    def predict_media(self, frame: pd.DataFrame, aggregate: str | None = None) -> pd.DataFrame:
        """One result row per input row: files by `path`, or bytes by `content` (named by `name` when given), with
        the frames aggregated by `aggregate` (or the row's `aggregate` column; default: the model's rule)."""
        from dfd.serving.media_scoring import RESULT_COLUMNS, MediaResult

        if self.scorer is None:
            raise ValueError("this model version was registered without its faces params: it scores crops only")
        rows = []
        for i, rec in enumerate(frame.to_dict("records")):
            # An `aggregate` column overrides per row: MLflow drops `params` for a model without a signature.
            method = rec["aggregate"] if isinstance(rec.get("aggregate"), str) else aggregate
            if isinstance(rec.get("path"), str | Path):
                res = self.scorer.score_path(Path(rec["path"]), method)
            else:
                name = str(rec.get("name") or f"row{i}")
                try:
                    data = _content_bytes(rec.get("content"))
                except ValueError as exc:
                    rows.append(MediaResult(name, reason="unreadable", detail=str(exc)).row())
                    continue
                res = self.scorer.score_bytes(data, name, method)
            rows.append(res.row())
        return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _content_bytes(content: Any) -> bytes:
    """A `content` cell as bytes: bytes as they are, text as base64 (JSON's way to carry bytes).

    Raises:
        ValueError: Text that is not base64, or a cell that is neither.
    """
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    if isinstance(content, str):
        try:
            return base64.b64decode(content, validate=True)
        except binascii.Error:
            raise ValueError("the `content` text is not base64-encoded file bytes") from None
    if content is None or content != content:  # None or NaN: a row of a mixed path/content frame
        return b""
    raise ValueError(f"`content` must be bytes or base64 text, got {type(content).__name__}")


# Models from code: MLflow executes this file when loading the model and serves what is set here.
mlflow.models.set_model(DeepfakeEnsembleModel())
