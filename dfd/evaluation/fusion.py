"""Fusion of member scores into one score, chosen by name (`ensemble.method`), and its identity-grouped CV.

Every method works on a matrix of member probabilities (frames x members, in `members` order; the ensemble stage
passes the members' Platt-calibrated probabilities) and is a pair: `fit(X, y, ctx) -> parameters` (a JSON-able
dict stored in ensemble.json) and `apply(parameters, X) -> fused score in [0, 1]`, so evaluation and the served
model fuse identically.

- `weighted_average`: weights from a seeded Optuna TPE study (resumable when given RDB storage).
- `stacking`: a logistic regression on the members' logits. The members' validation scores are already out of
  fold for the members (none trained on validation), which is what stacking needs; the CV below is out of fold
  for the stacker itself.
- `confidence`: per-frame weights |p - 0.5| (+ eps): a member that is sure about a frame counts more on it.
- `attention`: per-frame weights from a gating network over the members' logits (dfd/evaluation/attention.py); the
  ensemble stage serves it only when its CV log loss beats the weighted average's by more than a standard error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

from dfd.evaluation.calibration import (
    apply_post_calibration,
    calibrate,
    fit_calibration,
    fit_post_calibration,
    logit,
    sigmoid,
)
from dfd.platform.config import EnsembleParams
from dfd.platform.errors import ConfigError

TrialCallback = Callable[[int, dict[str, float], dict[str, float]], None]


@dataclass(frozen=True)
class FitContext:
    """What a fusion's fit may use besides the scores: params, member names, and (optionally) study storage."""

    cfg: EnsembleParams
    members: list[str]
    storage: str | None = None  # an Optuna RDB URL (e.g. sqlite:///.../optuna.db): the study resumes from it
    on_trial: TrialCallback | None = None


def objective_value(objective: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """The fusion objective on held-out frames: AUC or log loss (NaN when one class only)."""
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return float("nan")
    if objective == "log_loss":
        return float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))
    return float(roc_auc_score(labels, scores))


def _study_score(objective: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """What the study maximises: AUC with log loss breaking its ties (a small set is often ranked perfectly)."""
    ll = objective_value("log_loss", labels, scores)
    return -ll if objective == "log_loss" else objective_value("auc", labels, scores) - 1e-3 * ll


def study_name(X: np.ndarray, y: np.ndarray, ctx: FitContext) -> str:
    """A name derived from the inputs and the params that shape the search (not `trials`: more trials extend it)."""
    h = hashlib.sha256(repr((ctx.members, ctx.cfg.objective, ctx.cfg.seed)).encode())
    h.update(np.ascontiguousarray(X, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return f"ensemble-weights-{h.hexdigest()[:16]}"


def _fit_weighted(X: np.ndarray, y: np.ndarray, ctx: FitContext) -> dict[str, Any]:
    """Weights maximising the objective; the first trials are the plain average and each member alone, so the
    result is never worse on the fitting frames than the best member or the average."""
    import optuna  # lazily: the served model imports this module to fuse, never to search

    members = ctx.members

    def objective(trial: optuna.Trial) -> float:
        w = np.array([trial.suggest_float(m, 0.0, 1.0) for m in members])
        if w.sum() <= 1e-9:
            return float("-inf")
        fused = X @ (w / w.sum())
        value = _study_score(ctx.cfg.objective, y, fused)
        if ctx.on_trial:  # the objective under its own name; what the study maximises (with its tie-break) apart
            ctx.on_trial(trial.number, dict(zip(members, w.tolist(), strict=True)),
                         {ctx.cfg.objective: objective_value(ctx.cfg.objective, y, fused), "study_score": value})
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(X, y, ctx) if ctx.storage else None
    study = optuna.create_study(study_name=name, storage=ctx.storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=ctx.cfg.seed))
    if not study.trials:
        study.enqueue_trial({m: 1.0 for m in members})
        for solo in members:
            study.enqueue_trial({m: 1.0 if m == solo else 0.0 for m in members})
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    resumed = done
    if ctx.cfg.trials > done:
        study.optimize(objective, n_trials=ctx.cfg.trials - done, show_progress_bar=False)
    best = study.best_params
    total = sum(best.values())
    return {"weights": {m: best[m] / total for m in members}, "study": name, "trials": len(study.trials),
            "resumed_trials": resumed, "best_value": float(study.best_value)}


def _apply_weighted(p: dict[str, Any], X: np.ndarray, members: list[str]) -> np.ndarray:
    return X @ np.array([p["weights"][m] for m in members])


def _fit_stacking(X: np.ndarray, y: np.ndarray, ctx: FitContext) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1.0).fit(logit(X), np.asarray(y, dtype=int))
    return {"coef": dict(zip(ctx.members, lr.coef_[0].astype(float).tolist(), strict=True)),
            "intercept": float(lr.intercept_[0])}


def _apply_stacking(p: dict[str, Any], X: np.ndarray, members: list[str]) -> np.ndarray:
    return sigmoid(logit(X) @ np.array([p["coef"][m] for m in members]) + p["intercept"])


def _fit_confidence(X: np.ndarray, y: np.ndarray, ctx: FitContext) -> dict[str, Any]:
    return {"eps": 1e-3}  # nothing learned; eps keeps a frame where every member says 0.5 defined


def _apply_confidence(p: dict[str, Any], X: np.ndarray, members: list[str]) -> np.ndarray:
    w = np.abs(X - 0.5) + p["eps"]
    return (w * X).sum(axis=1) / w.sum(axis=1)


def _fit_attention(X: np.ndarray, y: np.ndarray, ctx: FitContext) -> dict[str, Any]:
    from dfd.evaluation.attention import fit_attention

    return fit_attention(X, y, ctx.members, ctx.cfg.attention_l2)


def _apply_attention(p: dict[str, Any], X: np.ndarray, members: list[str]) -> np.ndarray:
    from dfd.evaluation.attention import apply_attention

    return apply_attention(p, X)


FUSIONS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[..., np.ndarray]]] = {
    "weighted_average": (_fit_weighted, _apply_weighted), "stacking": (_fit_stacking, _apply_stacking),
    "confidence": (_fit_confidence, _apply_confidence), "attention": (_fit_attention, _apply_attention)}
#: Fusions that read the members' logits beyond a convex weight: fitted on a range, clipped to it when applied.
CLIPPED = ("stacking", "attention")


def list_fusions() -> list[str]:
    """Names usable in `ensemble.method`."""
    return sorted(FUSIONS)


def _lookup(method: str) -> tuple[Callable[..., dict[str, Any]], Callable[..., np.ndarray]]:
    if method not in FUSIONS:
        raise ConfigError(f"unknown fusion method '{method}'", f"choose from {', '.join(list_fusions())}")
    return FUSIONS[method]


def fit_fusion(method: str, X: np.ndarray, y: np.ndarray, ctx: FitContext) -> dict[str, Any]:
    """Fit the named fusion on member scores `X` (frames x members).

    Returns:
        `{"method", "members", **params}`; stacking and attention add `member_range`, each member's [min, max] on
        the fitting rows, which `apply_fusion` clips to (see `clip_to_range`): stacking's linear term and attention's
        gate read the logits themselves. The other fusions are convex mixtures of the members' probabilities with
        fixed or |p - 0.5| weights: one member's share of them is bounded, there is nothing to extrapolate.
    """
    X = np.asarray(X, dtype=float)
    params = _lookup(method)[0](X, np.asarray(y), ctx)
    if method in CLIPPED:
        params["member_range"] = {m: [float(X[:, j].min()), float(X[:, j].max())] for j, m in enumerate(ctx.members)}
    return {"method": method, "members": list(ctx.members), **params}


def clip_to_range(fitted: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """Each member's column of `X` clipped to the range it spanned where the fusion was fitted.

    A fusion fitted on validation knows nothing of a member's score beyond that range, and stacking's linear term
    would extrapolate it without bound: on the demo, one test identity drove two EfficientNet members to a logit far
    below any validation frame's (P(fake) ~0.00 on its fakes), and that single member outvoted the rest. A spec
    without `member_range` (fitted before it existed) is applied unclipped, as it was evaluated.
    """
    X = np.asarray(X, dtype=float)
    ranges = fitted.get("member_range")
    if not ranges:
        return X
    lo = np.array([ranges[m][0] for m in fitted["members"]])
    hi = np.array([ranges[m][1] for m in fitted["members"]])
    return np.clip(X, lo, hi)


def apply_fusion(fitted: dict[str, Any], X: np.ndarray) -> np.ndarray:
    """The fused score of member scores `X` (columns in `fitted["members"]` order), each clipped to its fitted
    range first."""
    X = clip_to_range(fitted, X)
    return np.clip(_lookup(fitted["method"])[1](fitted, X, fitted["members"]), 0.0, 1.0)


def member_weights(fitted: dict[str, Any]) -> dict[str, float]:
    """Each member's share of the fusion, for reports: the weights; stacking's coefficients over the sum of their
    absolute values (a negative one marks an anti-informative member); attention's mean gate on the fitting rows;
    equal shares for `confidence`."""
    members = fitted["members"]
    if fitted["method"] == "attention":
        return {m: float(fitted["mean_gates"][m]) for m in members}
    if fitted["method"] == "weighted_average":
        return dict(fitted["weights"])
    if fitted["method"] == "stacking":
        total = sum(abs(c) for c in fitted["coef"].values()) or 1.0
        return {m: fitted["coef"][m] / total for m in members}
    return {m: 1.0 / len(members) for m in members}


def identity_folds(groups: np.ndarray, k: int) -> np.ndarray:
    """Fold number (0..k-1) of each row by scikit-learn's GroupKFold: no identity lies in two folds."""
    from sklearn.model_selection import GroupKFold

    folds = np.full(len(groups), -1)
    for f, (_, held) in enumerate(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)):
        folds[held] = f
    return folds


def cross_validate(method: str, calibration: str, raw: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   ctx: FitContext) -> dict[str, Any]:
    """Identity-grouped k-fold CV of the whole fitted chain on validation frames: member Platt scaling, fusion and
    post-fusion calibration.

    Each fold fits all three on the other folds (in memory: the stored study is for the final fit) from the members'
    raw probabilities `raw` (frames x members) and scores the objective on its held-out identities. Returns the
    per-fold values, their mean and std, the out-of-fold final scores (`oof`, one per row) and the out-of-fold fused
    scores before post-fusion calibration (`oof_fused`: what the final post-fusion calibration is fitted on).
    """
    n_groups = len(np.unique(groups))
    k = min(ctx.cfg.cv_folds, n_groups)
    if k < 2:
        return {"folds": 0, "skipped": f"{n_groups} identity in validation: nothing to cross-validate on"}
    folds = identity_folds(groups, k)
    raw = np.asarray(raw, dtype=float)
    oof, oof_fused = np.full(len(y), np.nan), np.full(len(y), np.nan)
    values = []
    fold_ctx = FitContext(ctx.cfg, ctx.members)
    for f in range(k):
        tr, te = folds != f, folds == f
        if len(np.unique(y[tr])) < 2:  # a fold can leave one class only to fit on: its rows stay NaN
            values.append(float("nan"))
            continue
        members = fit_calibration(pd.DataFrame(raw[tr], columns=ctx.members).assign(label=y[tr]), ctx.members)
        X = np.column_stack([calibrate(raw[:, j], members[m]) for j, m in enumerate(ctx.members)])
        fitted = fit_fusion(method, X[tr], y[tr], fold_ctx)
        post = fit_post_calibration(calibration, apply_fusion(fitted, X[tr]), y[tr])
        oof_fused[te] = apply_fusion(fitted, X[te])
        oof[te] = apply_post_calibration(post, oof_fused[te])
        values.append(objective_value(ctx.cfg.objective, y[te], oof[te]))
    finite = [v for v in values if np.isfinite(v)]
    return {"folds": k, "groups": "identity", "n_groups": n_groups, "objective": ctx.cfg.objective,
            "values": values, "mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite)) if finite else float("nan"), "oof": oof, "oof_fused": oof_fused}
