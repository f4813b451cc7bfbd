"""Evidently reports: data drift of what the model sees (image statistics, embeddings) and classification quality.

Reference is the training data (what the model learnt from), current an evaluation set (the training set's test split,
or a further dataset), one row per sample: a video's crops averaged, an image's one crop (`per_sample`). Frames of a
video are no independent draws: with one row per crop, identity-disjoint splits of one distribution (30 vs 8 videos
of 32 frames, intra-video correlation 0.8) failed the gate's `max_drift_share` in 99 of 100 simulated runs; per
video, as monitoring compares served files, in none, and the K-S test keeps its 5% per column
(tests/evaluation/test_drift_per_video.py). A drifted column means its distribution on the evaluation set differs
from training: expected for a foreign dataset, and a warning sign for the same dataset's test split. Evidently is
required: a report that cannot be built fails the stage (a placeholder would read as "no drift").
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


def whole_samples(frames: pd.DataFrame, max_crops: int, seed: int = 0) -> pd.DataFrame:
    """The crops of a seeded random set of whole samples, at most `max_crops` crops (at least one sample)."""
    sizes = frames.groupby("sample_id", sort=True).size()
    if sizes.sum() <= max_crops:
        return frames
    order = sizes.sample(frac=1.0, random_state=seed)
    keep = order.index[(order.cumsum() <= max_crops) | (np.arange(len(order)) == 0)]
    return frames[frames["sample_id"].isin(set(keep))]


def per_sample(stats: pd.DataFrame, embeddings: np.ndarray, sample_ids: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """Crop rows to sample rows: the mean statistics and mean embedding of each sample's crops (sorted by id).

    Args:
        stats: `image_stats` of the crops, one row per crop.
        embeddings: (crops, dims) embeddings of the same crops.
        sample_ids: The sample of each crop.
    """
    ids = pd.Series(np.asarray(sample_ids)).astype(str)
    frame_stats = stats.reset_index(drop=True).groupby(ids, sort=True).mean()
    emb = pd.DataFrame(np.asarray(embeddings, dtype=float)).groupby(ids, sort=True).mean()
    return frame_stats.reset_index(drop=True), emb.to_numpy()


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


def _triage(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[list[str], dict[str, str], list[str]]:
    """Split the columns: (compared by Evidently, drifted without a test {column: why}, constant and unchanged).

    A column that collapses to a constant (or to nothing) on one side has no distribution to test, and Evidently's
    histograms fail on it; yet that collapse is the strongest drift there is, so it counts as drifted rather than
    leaving the count and the denominator. Equal constants on both sides are a column that did not move.
    """
    def flat(col: pd.Series) -> bool:
        return float(np.nanmax(col) - np.nanmin(col)) <= 1e-6

    compared, forced, unchanged = [], {}, []
    for c in reference.columns:
        ref, cur = reference[c], current[c]
        if ref.isna().all() and cur.isna().all():
            continue  # no data on either side: nothing was measured (listed as skipped)
        if ref.isna().all() or cur.isna().all():
            forced[c] = f"no values in the {'reference' if ref.isna().all() else 'current'} data"
        elif flat(ref) and flat(cur):
            if abs(float(np.nanmean(ref)) - float(np.nanmean(cur))) <= 1e-6:
                unchanged.append(c)
            else:
                forced[c] = "constant on both sides, at different values"
        elif flat(ref) or flat(cur):
            forced[c] = f"constant in the {'reference' if flat(ref) else 'current'} data only"
        else:
            compared.append(c)
    return compared, forced, unchanged


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, html: Path) -> dict[str, Any]:
    """Evidently's DataDriftPreset of `current` against `reference` (same numeric columns); writes `html`.

    Returns:
        `drifted_share` over ALL columns with data (Evidently's drifted count plus the columns drifted without a test,
        see `_triage`), `drifted_columns`, the per-column drift score with its test, `constant_drifted` (column: why),
        `constant_unchanged`, `skipped_empty`, and the row counts.
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    columns, forced, unchanged = _triage(reference, current)
    if not columns:
        raise ReportError(f"nothing to compare in {html.name}: every column is empty or constant",
                          "check the crops of the evaluation set")
    snapshot = _run(Report([DataDriftPreset()]), html, "data-drift", current_data=current[columns].reset_index(
        drop=True), reference_data=reference[columns].reset_index(drop=True))
    counted = len(columns) + len(forced) + len(unchanged)
    summary: dict[str, Any] = {"html": html.name, "reference_rows": len(reference), "current_rows": len(current),
                               "columns": {}, "constant_drifted": forced, "constant_unchanged": unchanged,
                               "skipped_empty": sorted(set(reference.columns) - set(columns) - set(forced)
                                                       - set(unchanged)),
                               "columns_counted": counted}
    for metric in snapshot.dict()["metrics"]:
        name, value, config = metric["metric_name"], metric["value"], metric.get("config", {})
        if name.startswith("DriftedColumnsCount"):
            summary["evidently_drifted_columns"] = float(value["count"])  # of the columns Evidently compared
            summary["drifted_columns"] = float(value["count"]) + len(forced)
            summary["drifted_share"] = summary["drifted_columns"] / counted
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
