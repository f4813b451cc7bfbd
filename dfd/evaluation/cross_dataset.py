"""Cross-dataset evaluation: one row of metrics per dataset the ensemble is scored on, as JSON and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dfd.evaluation.metrics import frame_and_video_metrics
from dfd.platform.config import AggregationParams

#: Columns of the table, in order (frame level, then video level).
COLUMNS = ["n", "auc", "ap", "eer", "accuracy", "log_loss", "video_n", "video_auc", "video_eer", "video_accuracy"]


def dataset_row(frames: pd.DataFrame, threshold: float, role: str,
                aggregation: AggregationParams | None = None, members: list[str] | None = None) -> dict[str, Any]:
    """Metrics of one dataset's scored frames (`sample_id`, `label`, `prob`), with the dataset's class counts.

    Video-level columns aggregate frames with `aggregation` (the ensemble's rule, as served). `members`: columns of
    `frames` holding each member's P(fake), reported as `member_auc` (which member generalises to this dataset).
    """
    m = frame_and_video_metrics(frames, threshold, aggregation=aggregation)
    row = {"role": role, **{k: m[k] for k in COLUMNS if k in m}, **{k: v for k, v in m.items() if k not in COLUMNS}}
    row["real_frames"] = int((frames["label"] == 0).sum())
    row["fake_frames"] = int((frames["label"] == 1).sum())
    if "method" in frames.columns:
        row["method_auc"] = method_auc(frames)
    if members:
        row["member_auc"] = member_auc(frames, members)
    return row


def member_auc(frames: pd.DataFrame, members: list[str]) -> dict[str, float]:
    """Frame AUC of each member's own column (NaN where a column is missing or the frames hold one class)."""
    from sklearn.metrics import roc_auc_score

    both = frames["label"].nunique() == 2
    return {m: float(roc_auc_score(frames["label"], frames[m])) if both and m in frames else float("nan")
            for m in members}


def method_auc(frames: pd.DataFrame) -> dict[str, float]:
    """Frame AUC of each manipulation method's fakes against all real frames (FF++ reports it per method)."""
    from sklearn.metrics import roc_auc_score

    real = frames[frames["label"] == 0]
    out = {}
    for method, fakes in frames[frames["label"] == 1].groupby("method"):
        both = pd.concat([real, fakes])
        out[str(method)] = float(roc_auc_score(both["label"], both["prob"])) if len(real) else float("nan")
    return out


def cross_dataset_table(rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows: datasets (the training set's test split first); columns: `role` then the metrics."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    front = ["role", *(c for c in COLUMNS if c in table.columns)]
    return table[front + [c for c in table.columns if c not in front]]


def table_plot(table: pd.DataFrame, path: Path) -> Path:
    """Frame and video AUC and EER per dataset as grouped bars, with the numbers as a table underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = [c for c in ("auc", "video_auc", "eer", "video_eer") if c in table.columns]
    fig, (ax, tab) = plt.subplots(2, 1, figsize=(max(6.0, 1.6 * len(table) + 3), 5.5),
                                  gridspec_kw={"height_ratios": [3, 1.4]})
    x = np.arange(len(table))
    width = 0.8 / max(1, len(metrics))
    for i, m in enumerate(metrics):
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, table[m].astype(float), width, label=m)
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set(xticks=x, xticklabels=[f"{n}\n({r})" for n, r in zip(table.index, table["role"], strict=True)],
           ylim=(0, 1.02), ylabel="value", title="Cross-dataset evaluation of the ensemble")
    ax.legend(fontsize=8, ncols=len(metrics))
    tab.axis("off")
    shown = [c for c in ("n", "auc", "ap", "eer", "accuracy", "video_auc", "video_eer") if c in table.columns]
    cells = [[f"{v:.0f}" if c == "n" else f"{v:.3f}" for c, v in zip(shown, row, strict=True)]
             for row in table[shown].astype(float).to_numpy()]
    tab.table(cellText=cells, rowLabels=list(table.index), colLabels=shown, loc="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
