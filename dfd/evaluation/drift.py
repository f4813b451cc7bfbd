"""Evidently reports: data drift of what the model sees (image statistics, embeddings) and classification quality.

Reference is the training data (what the model learnt from), current an evaluation set (the training set's test split,
or a further dataset). A drifted column means its distribution on the evaluation set differs from training: expected
for a foreign dataset, and a warning sign for the same dataset's test split. Evidently is required: a report that
cannot be built fails the stage (a placeholder would read as "no drift").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from dfd.platform.errors import StageError

STAT_COLUMNS = ["brightness", "contrast", "sharpness", "saturation"]


class ReportError(StageError):
    """An Evidently report could not be built or saved."""


def image_stats(crops: np.ndarray) -> pd.DataFrame:
    """Brightness, contrast, sharpness (variance of the Laplacian) and saturation of RGB uint8 crops (N, H, W, 3)."""
    rows = []
    for rgb in crops:
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rows.append({"brightness": float(grey.mean()), "contrast": float(grey.std()),
                     "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()),
                     "saturation": float(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1].mean())})
    return pd.DataFrame(rows, columns=STAT_COLUMNS)


def embedding_columns(reference: np.ndarray, currents: dict[str, np.ndarray], dims: int
                      ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Embeddings projected on the reference's first principal components, as columns `emb_0..`.

    The projection is fitted on the reference only, so every evaluation set is seen in the training data's axes.
    """
    from sklearn.decomposition import PCA

    k = max(1, min(dims, reference.shape[1], len(reference) - 1))
    pca = PCA(n_components=k, random_state=0).fit(reference)
    cols = [f"emb_{i}" for i in range(k)]
    return (pd.DataFrame(pca.transform(reference), columns=cols),
            {name: pd.DataFrame(pca.transform(x), columns=cols) for name, x in currents.items()})


def _run(report: Any, html: Path, what: str, **data: Any) -> Any:
    """Run an Evidently report and save its HTML; any failure becomes a ReportError and leaves no HTML."""
    try:
        snapshot = report.run(**data)
        html.parent.mkdir(parents=True, exist_ok=True)
        tmp = html.with_suffix(".html.tmp")
        snapshot.save_html(str(tmp))
        tmp.replace(html)
        return snapshot
    except Exception as exc:
        for p in (html, html.with_suffix(".html.tmp")):
            p.unlink(missing_ok=True)
        raise ReportError(f"Evidently {what} report {html.name} failed: {type(exc).__name__}: {exc}",
                          "see the traceback with DFD_DEBUG=1; set evaluate.drift_report: false to skip the "
                          "reports") from exc


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, html: Path) -> dict[str, Any]:
    """Evidently's DataDriftPreset of `current` against `reference` (same numeric columns); writes `html`.

    Returns:
        `drifted_share` and `drifted_columns` (Evidently's DriftedColumnsCount), the per-column drift score with its
        test, the columns left out because they are constant on one side, and the row counts.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    # A (nearly) constant column has no distribution to compare, and Evidently's histograms fail on it.
    def spread(col: str) -> float:
        return min(float(np.nanmax(df[col]) - np.nanmin(df[col])) for df in (reference, current))

    usable = [c for c in reference.columns if reference[c].notna().any() and current[c].notna().any()]
    columns = [c for c in usable if spread(c) > 1e-6]
    if not columns:
        raise ReportError(f"nothing to compare in {html.name}: every column is empty or constant",
                          "check the crops of the evaluation set")
    snapshot = _run(Report([DataDriftPreset()]), html, "data-drift", current_data=current[columns].reset_index(
        drop=True), reference_data=reference[columns].reset_index(drop=True))
    summary: dict[str, Any] = {"html": html.name, "reference_rows": len(reference), "current_rows": len(current),
                               "columns": {}, "skipped_constant": sorted(set(reference.columns) - set(columns))}
    for metric in snapshot.dict()["metrics"]:
        name, value, config = metric["metric_name"], metric["value"], metric.get("config", {})
        if name.startswith("DriftedColumnsCount"):
            summary["drifted_columns"] = float(value["count"])
            summary["drifted_share"] = float(value["share"])
        elif name.startswith("ValueDrift"):
            summary["columns"][config["column"]] = {"score": float(value), "method": config.get("method"),
                                                    "threshold": config.get("threshold")}
    if "drifted_share" not in summary:
        raise ReportError(f"{html.name}: Evidently returned no DriftedColumnsCount",
                          "the evidently version may have changed its presets (pinned <0.8)")
    return summary


def quality_report(current: pd.DataFrame, reference: pd.DataFrame | None, threshold: float,
                   html: Path) -> dict[str, Any]:
    """Evidently's ClassificationPreset on `label` vs `prob` (P(fake)), current against reference; writes `html`.

    Returns:
        The scalar metrics Evidently computed (accuracy, precision, recall, F1, ROC AUC, log loss, rates).
    """
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    definition = DataDefinition(classification=[BinaryClassification(target="label", prediction_probas="prob",
                                                                     pos_label=1)],
                                numerical_columns=["prob"], categorical_columns=["label"])

    def dataset(df: pd.DataFrame) -> Any:
        return Dataset.from_pandas(df[["label", "prob"]].reset_index(drop=True).astype({"label": int}),
                                   data_definition=definition)

    snapshot = _run(Report([ClassificationPreset(probas_threshold=threshold)]), html, "classification-quality",
                    current_data=dataset(current), reference_data=None if reference is None else dataset(reference))
    out: dict[str, Any] = {"html": html.name}
    for metric in snapshot.dict()["metrics"]:
        value = metric["value"]
        if isinstance(value, int | float):
            out[metric["metric_name"].split("(")[0]] = float(value)
    return out
