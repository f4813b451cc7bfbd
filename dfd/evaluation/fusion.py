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


def _fit_chain(method: str, raw: np.ndarray, y: np.ndarray, ctx: FitContext
               ) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Member Platt scaling and fusion fitted on the rows given (the served chain before post-fusion calibration)."""
    members = fit_calibration(pd.DataFrame(raw, columns=ctx.members).assign(label=y), ctx.members)
    return members, fit_fusion(method, _calibrated(raw, members, ctx.members), y, ctx)


def _calibrated(raw: np.ndarray, members: dict[str, list[float]], names: list[str]) -> np.ndarray:
    return np.column_stack([calibrate(raw[:, j], members[m]) for j, m in enumerate(names)])


def _oof_fused(method: str, raw: np.ndarray, y: np.ndarray, folds: np.ndarray, ctx: FitContext) -> np.ndarray:
    """Out-of-fold fused scores: each fold's rows fused by the chain fitted on the other folds (NaN where the other
    folds hold one class only)."""
    out = np.full(len(y), np.nan)
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        if len(np.unique(y[tr])) < 2:
            continue
        members, fitted = _fit_chain(method, raw[tr], y[tr], ctx)
        out[te] = apply_fusion(fitted, _calibrated(raw[te], members, ctx.members))
    return out


def fit_post_on_oof(calibration: str, oof_fused: np.ndarray, in_sample: np.ndarray, y: np.ndarray
                    ) -> tuple[dict[str, Any], bool]:
    """The post-fusion calibration as the ensemble stage fits it: on the out-of-fold fused scores where they hold
    both classes, else on the in-sample fused scores. Returns (fitted, whether out of fold)."""
    ok = np.isfinite(oof_fused)
    if ok.any() and len(np.unique(y[ok])) == 2:
        return fit_post_calibration(calibration, oof_fused[ok], y[ok]), True
    return fit_post_calibration(calibration, in_sample, y), False


def cross_validate(method: str, calibration: str, raw: np.ndarray, y: np.ndarray, groups: np.ndarray,
                   ctx: FitContext) -> dict[str, Any]:
    """Identity-cluster-grouped k-fold CV of the whole served chain on validation frames, nested: member Platt
    scaling, fusion and post-fusion calibration, each fitted as the ensemble stage fits it.

    The served post-fusion calibration is fitted on out-of-fold fused scores of the validation set; so inside each
    outer fold the training part runs its own inner identity-grouped CV for the out-of-fold fused scores the fold's
    calibration is fitted on, and nothing of the held-out fold reaches any step (in memory: the stored study is for
    the final fit). Fitting the calibration on the fold's in-sample fused scores, as before, measured another chain:
    one that learnt the fusion's in-sample confidence.

    Args:
        groups: Identity cluster per row (`dfd.evaluation.significance.identity_clusters`): no cluster in two folds.

    Returns:
        The per-fold objective values, their mean and std, the out-of-fold final scores (`oof`, one per row) and
        the out-of-fold fused scores before post-fusion calibration (`oof_fused`: what the final post-fusion
        calibration is fitted on).
    """
    n_groups = len(np.unique(groups))
    k = min(ctx.cfg.cv_folds, n_groups)
    if k < 2:
        return {"folds": 0, "skipped": f"{n_groups} identity cluster in validation: nothing to cross-validate on"}
    folds = identity_folds(groups, k)
    raw = np.asarray(raw, dtype=float)
    oof, oof_fused = np.full(len(y), np.nan), np.full(len(y), np.nan)
    values = []
    fold_ctx = FitContext(ctx.cfg, ctx.members)
    inner_oof = 0
    for f in range(k):
        tr, te = folds != f, folds == f
        if len(np.unique(y[tr])) < 2:  # a fold can leave one class only to fit on: its rows stay NaN
            values.append(float("nan"))
            continue
        members, fitted = _fit_chain(method, raw[tr], y[tr], fold_ctx)
        inner_k = min(ctx.cfg.cv_folds, len(np.unique(groups[tr])))
        inner = (_oof_fused(method, raw[tr], y[tr], identity_folds(groups[tr], inner_k), fold_ctx) if inner_k >= 2
                 else np.full(int(tr.sum()), np.nan))
        post, out_of_fold = fit_post_on_oof(calibration, inner, apply_fusion(fitted, _calibrated(
            raw[tr], members, ctx.members)), y[tr])
        inner_oof += out_of_fold
        oof_fused[te] = apply_fusion(fitted, _calibrated(raw[te], members, ctx.members))
        oof[te] = apply_post_calibration(post, oof_fused[te])
        values.append(objective_value(ctx.cfg.objective, y[te], oof[te]))
    finite = [v for v in values if np.isfinite(v)]
    return {"folds": k, "groups": "identity cluster", "n_groups": n_groups, "objective": ctx.cfg.objective,
            "nested": f"post-fusion calibration fitted on inner out-of-fold fused scores in {inner_oof} of {k} folds",
            "values": values, "mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite)) if finite else float("nan"), "oof": oof, "oof_fused": oof_fused}
