"""Calibration fitted on validation: per-member Platt scaling before fusion, and one step chosen by name after it.

Members' raw probabilities live on different scales, so each is Platt-scaled before fusion; fusion (an average of
probabilities, a stacking model, per-frame weights) changes the scale again, so the fused score is calibrated once
more (`temperature`, `platt`, `isotonic` or `none`) so that the served P(fake) means what it says.
A fitted step is a plain dict (`{"method": name, **parameters}`) stored in ensemble.json and applied by
`apply_post_calibration` wherever the ensemble scores: evaluation and the served model alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from dfd.platform.errors import ConfigError

EPS = 1e-6
# Fused scores are float64 (a stacking sigmoid reaches 1e-12 and below): clipped at EPS, the monotone post-fusion
# calibration tied them and changed the ranking it must keep (9 of the demo's 80 test frames, AUC 0.923 -> 0.917).
POST_EPS = 1e-15


def logit(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """log(p / (1 - p)), with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) (scipy's expit: no overflow warnings, full precision near 0)."""
    from scipy.special import expit

    return expit(np.asarray(z, dtype=float))


def _platt(x: np.ndarray, labels: np.ndarray) -> list[float]:
    """(a, b) of P = sigmoid(a * x + b), fitted by a ridge-regularised logistic regression on standardised x.

    Standardising first makes the regularisation (C=1) independent of the score's scale: a member whose logits span
    0.05 would otherwise be flattened to the base rate (every score ~0.57), while a member that separates validation
    perfectly still gets a large but finite slope.
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd = float(np.mean(x)), float(np.std(x))
    sd = sd if sd > 1e-12 else 1.0
    lr = LogisticRegression(C=1.0).fit(((x - mu) / sd)[:, None], np.asarray(labels, dtype=int))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return [a / sd, b - a * mu / sd]


def fit_calibration(val: pd.DataFrame, models: list[str]) -> dict[str, list[float]]:
    """Platt scaling per member on validation: P = sigmoid(a * logit(p) + b), as `{member: [a, b]}`."""
    return {m: _platt(logit(val[m].to_numpy()), val["label"].to_numpy()) for m in models}


def calibrate(probs: np.ndarray, ab: list[float]) -> np.ndarray:
    """Apply a member's Platt scaling `(a, b)` to its probabilities."""
    return sigmoid(ab[0] * logit(np.asarray(probs)) + ab[1])


# --- after fusion -------------------------------------------------------------------------------------------------


def _fit_temperature(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """One temperature T for sigmoid(logit(p) / T), minimising validation log loss (Guo et al., 2017).

    T is searched in [0.2, 20] (on log T): a validation set that the fused score separates perfectly would
    otherwise drive T to 0 and every output to exactly 0 or 1, where frames tie and the ranking (AUC) is lost.
    """
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    z = logit(scores, POST_EPS)
    y = np.asarray(labels, dtype=int)
    res = minimize_scalar(lambda lt: log_loss(y, np.clip(sigmoid(z / np.exp(lt)), EPS, 1 - EPS), labels=[0, 1]),
                          bounds=(np.log(0.2), np.log(20.0)), method="bounded")
    return {"temperature": float(np.exp(res.x))}


def _apply_temperature(p: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    return sigmoid(logit(scores, POST_EPS) / p["temperature"])


def _fit_platt(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    a, b = _platt(logit(scores, POST_EPS), labels)
    return {"a": a, "b": b}


def _apply_platt(p: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    return sigmoid(p["a"] * logit(scores, POST_EPS) + p["b"])


def _fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """A monotone step function (scikit-learn's IsotonicRegression), stored as its breakpoints.

    Outputs are kept inside [0.001, 0.999]: a step fitted on a small validation set must not claim certainty.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=1e-3, y_max=1 - 1e-3, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(scores, dtype=float), np.asarray(labels, dtype=float))
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def _apply_isotonic(p: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    # np.interp between breakpoints and constant beyond them: exactly IsotonicRegression.predict (out_of_bounds=clip).
    return np.interp(np.asarray(scores, dtype=float), p["x"], p["y"])


def _fit_none(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    return {}


def _apply_none(p: dict[str, Any], scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores, dtype=float)


Fit = Callable[[np.ndarray, np.ndarray], dict[str, Any]]
Apply = Callable[[dict[str, Any], np.ndarray], np.ndarray]
POST_CALIBRATIONS: dict[str, tuple[Fit, Apply]] = {
    "temperature": (_fit_temperature, _apply_temperature), "platt": (_fit_platt, _apply_platt),
    "isotonic": (_fit_isotonic, _apply_isotonic), "none": (_fit_none, _apply_none)}


def list_post_calibrations() -> list[str]:
    """Names usable in `ensemble.calibration`."""
    return sorted(POST_CALIBRATIONS)


def _lookup(method: str) -> tuple[Fit, Apply]:
    if method not in POST_CALIBRATIONS:
        raise ConfigError(f"unknown calibration '{method}'", f"choose from {', '.join(list_post_calibrations())}")
    return POST_CALIBRATIONS[method]


def fit_post_calibration(method: str, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Fit the named calibration of fused scores on validation; returns `{"method": name, **parameters}`."""
    return {"method": method, **_lookup(method)[0](np.asarray(scores, dtype=float), np.asarray(labels))}


def apply_post_calibration(fitted: dict[str, Any] | None, scores: np.ndarray) -> np.ndarray:
    """Apply a fitted calibration (None or `{"method": "none"}`: the scores unchanged)."""
    if not fitted:
        return np.asarray(scores, dtype=float)
    return _lookup(fitted["method"])[1](fitted, np.asarray(scores, dtype=float))
