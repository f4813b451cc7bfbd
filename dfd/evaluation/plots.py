"""Evaluation plots: ROC curves per model and for the ensemble, and score histograms per class."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve


def roc_plot(frames: pd.DataFrame, columns: list[str], path: Path, title: str) -> Path:
    """ROC curves of each score column against `label`."""
    fig, ax = plt.subplots(figsize=(5, 5))
    y = frames["label"].to_numpy()
    for col in columns:
        if len(np.unique(y)) < 2:
            break
        fpr, tpr, _ = roc_curve(y, frames[col])
        ax.plot(fpr, tpr, lw=2.5 if col == "prob" else 1.2,
                label=f"{'ensemble' if col == 'prob' else col} (AUC {roc_auc_score(y, frames[col]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def score_histogram(frames: pd.DataFrame, path: Path, threshold: float, title: str) -> Path:
    """Histogram of ensemble scores for real and fake frames, with the decision threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 31)
    for label, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        ax.hist(frames.loc[frames["label"] == label, "prob"], bins=bins, alpha=0.6, label=name, color=colour)
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="P(fake)", ylabel="frames", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
