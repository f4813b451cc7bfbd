"""The served ensemble: an MLflow pyfunc model over the member checkpoints and the fitted weights.

Input, either:
- RGB uint8 face crops, shape (N, H, W, 3), as the faces stage writes them (any square size: each member resizes and
  normalises with its own registered config). Output: P(fake), float32 (N,).
- Media: a pandas DataFrame with a `path` column (image or video files) or a `content` column (their bytes, or the
  bytes base64-encoded as text, which is how JSON carries them to `mlflow models serve`; an optional `name` column
  gives the file type). Faces are extracted as the faces stage did (its params travel with the model as the `faces`
  artifact), scored, and aggregated per file. Output: a DataFrame with one row per input
  (`dfd.serving.media_scoring.RESULT_COLUMNS`: path, p_fake, label, status, agreement, frames, faces, tracks,
  reason, detail).
  `mlflow.pyfunc.load_model(uri).predict(df)` takes both: the model is logged without a signature, since MLflow's
  schemas cannot say "crops or media" (see `Tracker.log_pyfunc_model`); `predict` checks the input itself.

Logged as "models from code": MLflow stores this file and runs it at load time (the `set_model` call below), so the
served model is source anyone can read, not a cloudpickled object tied to one Python and library version.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

PATH_ROOTS_ENV = "DFD_PATH_ROOTS"  # the folders the `path` input may read, os.pathsep-separated


class DeepfakeEnsembleModel(mlflow.pyfunc.PythonModel):
    """Weighted average of the member detectors' probabilities, on crops or on media files."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from dfd.serving.ensemble import EnsemblePredictor
        from dfd.serving.media_scoring import MediaScorer
        from dfd.serving.onnx_engine import apply_engine

        self.spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        checkpoints = {m: Path(context.artifacts[f"member_{m}"]) for m in self.spec["members"]}
        self.checkpoints = checkpoints  # what heatmaps rebuild a differentiable ensemble from (dfd.serving.heatmaps)
        self.threshold = float(self.spec.get("threshold", self.spec.get("val_eer_threshold", 0.5)))
        self.predictor = EnsemblePredictor.from_spec(self.spec, checkpoints)
        self.artifacts = dict(context.artifacts)  # the ONNX members among them: `apply_engine` switches later
        # The engine the version was registered to run (`serve.engine`/`serve.precision` then, what `mlflow models
        # serve` runs), or what the loader overrides it with: `dfd.serving.registry_model.load` loads on torch fp32
        # and switches itself after measuring; MLFLOW_PYFUNC_INFERENCE_CONFIG='{"engine": "torch"}' for MLflow's.
        config = dict(context.model_config or {})
        self.engine_fallback = apply_engine(self.predictor, str(config.get("engine", "torch")),
                                            str(config.get("precision", "fp32")), context.artifacts)
        faces = context.artifacts.get("faces")
        # The faces params the training crops were made with; a model registered without them scores crops only.
        self.faces_cfg = json.loads(Path(faces).read_text())["params"] if faces else None
        self.scorer = MediaScorer(self.predictor, self.spec, self.faces_cfg) if self.faces_cfg else None

    # MLflow reads the input's hint when this class is defined: a missing one prints its "add type hints" warning on
    # every load, and one it can build a schema from (list[...]) makes it validate and convert the input, which
    # no schema can do for "crops or media". An ndarray (like a DataFrame) is a hint it takes as is, without
    # validation; a union of the two it refuses with another warning. So the hint names the crops, and a
    # DataFrame of media is accepted too: `predict` checks its input itself.
    def predict(self, context: mlflow.pyfunc.PythonModelContext | None, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray | pd.DataFrame:
        """P(fake) of each crop (float32, (N,)), or one result row per media file (see the module docstring)."""
        if isinstance(model_input, pd.DataFrame) and ({"path", "content"} & set(model_input.columns)):
            return self.predict_media(model_input, (params or {}).get("aggregate"))
        crops = np.asarray(model_input)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected RGB uint8 face crops of shape (N, H, W, 3), got shape {crops.shape}; or, for "
                             "image and video files, a DataFrame with a `path` or a `content` column")
        return self.predictor(crops.astype(np.uint8)).astype(np.float32)

    def predict_media(self, frame: pd.DataFrame, aggregate: str | None = None) -> pd.DataFrame:
        """One result row per input row: files by `path`, or bytes by `content` (named by `name` when given), with
        the frames aggregated by `aggregate` (or the row's `aggregate` column; default: the model's rule).

        `path` rows are read only under the folders in `$DFD_PATH_ROOTS` (else the scorer's `serve.path_roots`),
        each opened once and copied before it is checked, as `dfd serve` reads a path list: `mlflow models serve`
        would otherwise read any file on its machine for any client.
        """
        if self.scorer is None:
            raise ValueError("this model version was registered without its faces params: it scores crops only")
        records = frame.to_dict("records")
        with tempfile.TemporaryDirectory(prefix="dfd-paths-") as tmp:
            copies = self._copy_paths([r["path"] for r in records if isinstance(r.get("path"), str | Path)],
                                      Path(tmp))
            return self._score_records(records, copies, aggregate)

    def _copy_paths(self, paths: list[str | Path], folder: Path) -> dict[str, Any]:
        """The `path` rows' files opened once under the allowed roots and copied into `folder` (as `dfd serve`
        reads a path list): client name -> private copy, or the result that refused it.

        Raises:
            ValueError: Paths without roots to read them under, or a path outside them.
        """
        from dfd.serving.drop_folders import copy_in, outside
        from dfd.serving.limits import BodyError

        if not paths:
            return {}
        env = os.environ.get(PATH_ROOTS_ENV, "")
        roots = [Path(r).resolve() for r in (env.split(os.pathsep) if env else self.scorer.limits.path_roots) if r]
        if not roots:
            raise ValueError(f"the `path` input reads files only under the folders in ${PATH_ROOTS_ENV} "
                             "(separated by ':'), which is unset: set it, or send the files' bytes as `content`")
        names = [str(p) for p in paths]
        try:
            if far := outside(names, roots):
                raise ValueError(f"paths outside ${PATH_ROOTS_ENV}: {', '.join(far[:5])[:500]}")
            limits = self.scorer.limits
            return dict(copy_in(names, roots, folder, limits.max_upload_bytes, limits.max_path_bytes))
        except BodyError as exc:
            raise ValueError(f"{exc.error}: {exc.detail}") from None

    def _score_records(self, records: list[dict[str, Any]], copies: dict[str, Any], aggregate: str | None,
                       ) -> pd.DataFrame:
        from dfd.serving.media_scoring import RESULT_COLUMNS, MediaResult

        rows = []
        for i, rec in enumerate(records):
            # An `aggregate` column overrides per row: MLflow drops `params` for a model without a signature.
            method = rec["aggregate"] if isinstance(rec.get("aggregate"), str) else aggregate
            if isinstance(rec.get("path"), str | Path):
                name = str(rec["path"])
                copy = copies[name]
                res = self.scorer.score_upload(copy, name, method) if isinstance(copy, Path) else copy
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
