"""Evaluation plots (PNG, Agg): ROC and precision-recall curves, confusion matrix, reliability diagrams, histograms."""

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


def score_histogram(frames: pd.DataFrame, path: Path, threshold: float, title: str, score_col: str = "prob") -> Path:
    """Histogram of ensemble scores (`score_col`) for real and fake frames, with the decision threshold."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 31)
    for label, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
        ax.hist(frames.loc[frames["label"] == label, score_col], bins=bins, alpha=0.6, label=name, color=colour)
    if np.isfinite(threshold):  # a score before calibration has no threshold of its own
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(xlabel="P(fake)", ylabel="frames", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(col: str) -> str:
    return "ensemble" if col == "prob" else col


def pr_plot(frames: pd.DataFrame, columns: list[str], path: Path, title: str) -> Path:
    """Precision-recall curves of each score column against `label` (fake = positive), with their AP."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    y = frames["label"].to_numpy()
    for col in columns if len(np.unique(y)) > 1 else []:
        precision, recall, _ = precision_recall_curve(y, frames[col])
        ax.plot(recall, precision, lw=2.5 if col == "prob" else 1.2,
                label=f"{_label(col)} (AP {average_precision_score(y, frames[col]):.3f})")
    ax.axhline(y.mean() if len(y) else 0, color="k", ls=":", lw=0.8, label="chance")
    ax.set(xlabel="recall (fakes found)", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def confusion_plot(labels: np.ndarray, scores: np.ndarray, threshold: float, path: Path, title: str) -> Path:
    """The confusion matrix (counts and row shares) of `scores >= threshold` against the labels."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(np.asarray(labels, dtype=int), (np.asarray(scores) >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm, cmap="Blues")
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, f"{n}\n({n / rows[i, 0]:.0%})", ha="center", va="center",
                color="white" if n > cm.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "fake"], yticklabels=["real", "fake"],
           xlabel="predicted", ylabel="true", title=f"{title}\nthreshold {threshold:.3f}")
    return _save(fig, path)


def reliability_plot(curves: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Reliability diagram: observed share of fakes against mean P(fake) per bin, one line per named curve
    (e.g. before and after calibration; frames `dfd.evaluation.metrics.reliability_bins` made), ECE and the crop
    count in the legend, each bin's crop count beside its point."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    for name, r in curves.items():
        used = r[r["count"] > 0]
        ece = float((used["count"] / used["count"].sum() * (used["fake_share"] - used["mean_score"]).abs()).sum())
        (line,) = ax.plot(used["mean_score"], used["fake_share"], marker="o",
                          label=f"{name} (plug-in ECE {ece:.3f}, {int(used['count'].sum())} crops)")
        # How many crops each point stands on: a bin of 3 crops says little, and the reader must see it.
        for x, y, n in zip(used["mean_score"], used["fake_share"], used["count"], strict=True):
            ax.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6,
                        color=line.get_color())
    ax.set(xlabel="mean predicted P(fake) in bin", ylabel="share of fakes in bin", title=title, xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)
