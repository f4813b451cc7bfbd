"""Per-member Platt scaling, fitted on validation by the ensemble stage and applied wherever members are fused."""

from __future__ import annotations

import numpy as np
import pandas as pd


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_calibration(val: pd.DataFrame, models: list[str]) -> dict[str, list[float]]:
    """Platt scaling per member on validation: P = sigmoid(a * logit(p) + b).

    Members' raw probabilities live on different scales (one may rank perfectly inside 0.8..0.9); averaging them
    raw lets the widest-spread member dominate whatever its quality. Regularised (C=1) so that a member that
    separates validation perfectly gets a large but finite slope.
    """
    from sklearn.linear_model import LogisticRegression

    out = {}
    for m in models:
        lr = LogisticRegression(C=1.0).fit(logit(val[m].to_numpy())[:, None], val["label"].to_numpy())
        out[m] = [float(lr.coef_[0, 0]), float(lr.intercept_[0])]
    return out


def calibrate(probs: np.ndarray, ab: list[float]) -> np.ndarray:
    """Apply a member's Platt scaling `(a, b)` to its probabilities."""
    return 1 / (1 + np.exp(-(ab[0] * logit(np.asarray(probs)) + ab[1])))
