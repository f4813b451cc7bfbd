"""`attention` fusion: per-frame member weights from a small gating network over what the members say.

The gate is a softmax over members of a linear map of the members' standardised logits: g = softmax(u W + b), with
u = (logit(p) - mu) / sd (frames x members), and the fused score is the gated mixture sum_m g_m p_m of the members'
calibrated probabilities. A mixture of probabilities, like the weighted average (which it is when W = 0): a member's
share is at most 1, so nothing extrapolates, and the fitted-range clip bounds what the gate sees. Fitted by
L-BFGS on the log loss with a ridge penalty on W (b is free), from the plain average.

Whether it earns its place is decided where it is fitted (tasks/ensemble.py): its identity-grouped CV log loss must
beat the weighted average's by more than one standard error of the paired per-fold difference, or the weighted
average is served instead, and ensemble.json says which and why.

Only the members' scores feed the gate: the validation predictions the ensemble stage fits on carry no penultimate
features, so the issue's "features reduced by a fixed projection" would need the train stage to write them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from dfd.evaluation.calibration import logit

# Ridge weight on W per frame-averaged log loss: the inputs are standardised, so a gate weight of 1 (a member's share
# multiplied by e per standard deviation of a logit) costs 0.01 nats, the size of a log-loss gain worth having.
DEFAULT_L2 = 0.01
PROB_EPS = 1e-7  # the fused probability inside the log loss, as sklearn's log_loss clips it


def _inputs(X: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return (logit(X) - mu) / sd


def gates(params: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Each frame's member weights (frames x members, rows sum to 1)."""
    W, b = np.asarray(params["W"], float), np.asarray(params["b"], float)
    return softmax(_inputs(X, np.asarray(params["mu"]), np.asarray(params["sd"])) @ W + b, axis=1)


def fit_attention(X: np.ndarray, y: np.ndarray, members: list[str], l2: float = DEFAULT_L2) -> dict[str, Any]:
    """Fit W and b on calibrated member probabilities `X` (frames x members) and labels `y`."""
    X = np.asarray(X, float)
    y = np.asarray(y, float)
    n, m = X.shape
    z = logit(X)
    mu, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    u = (z - mu) / sd

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[:m * m].reshape(m, m), theta[m * m:]
        a = u @ W + b
        g = np.exp(log_softmax(a, axis=1))
        p = np.clip((g * X).sum(1), PROB_EPS, 1 - PROB_EPS)
        value = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) + l2 * np.sum(W ** 2)
        dp = (p - y) / (p * (1 - p)) / n  # d loss / d p
        da = dp[:, None] * g * (X - p[:, None])  # softmax: d p / d a_k = g_k (x_k - p)
        grad = np.concatenate([(u.T @ da + 2 * l2 * W).ravel(), da.sum(0)])
        return float(value), grad

    start = np.zeros(m * m + m)  # W = 0, b = 0: the plain average
    res = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    W, b = res.x[:m * m].reshape(m, m), res.x[m * m:]
    params = {"W": W.tolist(), "b": b.tolist(), "mu": mu.tolist(), "sd": sd.tolist(), "l2": l2,
              "converged": bool(res.success), "iterations": int(res.nit)}
    params["mean_gates"] = dict(zip(members, gates(params, X).mean(0).tolist(), strict=True))
    return params


def apply_attention(params: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """The gated mixture of calibrated member probabilities `X` (frames x members)."""
    X = np.asarray(X, float)
    return (gates(params, X) * X).sum(1)


def fold_log_losses(oof: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The log loss of out-of-fold scores in each fold (NaN for a fold the CV could not fit)."""
    from sklearn.metrics import log_loss

    out = []
    for f in range(int(folds.max()) + 1):
        rows = (folds == f) & np.isfinite(oof)
        out.append(float(log_loss(y[rows], np.clip(oof[rows], PROB_EPS, 1 - PROB_EPS), labels=[0, 1]))
                   if rows.any() else float("nan"))
    return np.array(out)


def attention_verdict(attention_cv: dict[str, Any], average_cv: dict[str, Any], y: np.ndarray,
                      groups: np.ndarray) -> tuple[bool, dict[str, Any]]:
    """Whether attention earns its place: its CV log loss below the weighted average's by more than one standard
    error of the paired per-fold difference (both CVs ran on the same identity-grouped folds).

    Returns:
        (keep attention, a summary for ensemble.json: what was asked, what is served, the numbers and the reason).
    """
    from dfd.evaluation.fusion import identity_folds

    out: dict[str, Any] = {"asked": "attention", "served": "weighted_average"}
    if not attention_cv.get("folds") or "oof" not in attention_cv or "oof" not in average_cv:
        return False, {**out, "reason": f"no cross-validation to judge it on ({attention_cv.get('skipped', '')})"}
    folds = identity_folds(groups, attention_cv["folds"])
    y = np.asarray(y, int)
    att = fold_log_losses(attention_cv["oof"], y, folds)
    avg = fold_log_losses(average_cv["oof"], y, folds)
    diff = (att - avg)[np.isfinite(att - avg)]
    if len(diff) < 2:
        return False, {**out, "reason": f"{len(diff)} fold(s) with both scored: too few to judge"}
    gain, se = float(-diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    keep = gain > se
    out.update(served="attention" if keep else "weighted_average", folds=len(diff),
               log_loss_attention=float(np.nanmean(att)), log_loss_weighted_average=float(np.nanmean(avg)),
               gain=gain, standard_error=se,
               reason=(f"CV log loss {np.nanmean(att):.4f} vs weighted average {np.nanmean(avg):.4f}: gain {gain:.4f} "
                       f"{'>' if keep else '<='} one standard error {se:.4f} over {len(diff)} identity-grouped folds"))
    return keep, out
