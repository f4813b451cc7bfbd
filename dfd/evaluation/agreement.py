"""Member agreement: the share of the fusion's weight whose members' own labels agree with the ensemble's, per file.

A member's label is its calibrated P(fake) (its Platt scaling in ensemble.json), aggregated over the file's crops by
the ensemble's rule, at 0.5; the ensemble's label is its final P(fake) at the decision threshold. Each member counts
with its share of the fusion (`weights`: a weighted average's weight, or a stacking coefficient over the sum of their
absolute values), not one vote each: on the demo a member holding 0.25% of the fusion (MesoNet, 56% agreement with the
ensemble) and one at -4% (Xception, 50%) made 49% of the test files `uncertain` with one vote each, although the
ensemble was right on all of them; weighted, 21% were. A negative stacking coefficient means the fusion reads the
member's P(fake) as evidence for real (it corrects for members that share a cue), so its label counts inverted.
Members whose weight is zero are left out (they do not move the score); real-only members (SBI) count like the others.
A file below `ensemble.agreement_threshold` is answered `uncertain` (reason `members_disagree`) with its P(fake) still
given; the evaluate stage reports the share of test files below it, which `evaluate.gate.max_uncertain_share` may
bound.

The same functions serve `dfd predict`/`dfd serve` (one file's crops) and the evaluate stage (every test file), so
the share the gate judged is the share served.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dfd.evaluation.aggregate import aggregate
from dfd.evaluation.calibration import calibrate
from dfd.platform.config import AggregationParams, EnsembleParams

#: A member's own label: its calibrated P(fake) at 0.5 (Platt scaling put every member on that scale).
MEMBER_THRESHOLD = 0.5
#: |weight| at or below this is zero: the weighted average's solo trials give other members exactly 0, and weights
#: are normalised floats (the fusion itself treats a weight sum under 1e-9 as none).
ZERO_WEIGHT = 1e-9
#: The reason an `uncertain` answer gives.
REASON = "members_disagree"


def counted_members(spec: dict[str, Any]) -> list[str]:
    """The members whose labels are counted: the fusion's, in its order, less those with zero weight.

    `spec["weights"]` is each member's share of the fusion (stacking: its coefficient over the sum of their absolute
    values, so a negative one is counted: it moves the score).
    """
    weights = spec.get("weights") or {}
    members = spec["fusion"]["members"] if spec.get("fusion") else list(weights)
    return [m for m in members if abs(float(weights.get(m, 0.0))) > ZERO_WEIGHT]


def member_weights(spec: dict[str, Any]) -> dict[str, float]:
    """Each counted member's signed share of the fusion, the shares' absolute values summing to 1.

    A spec without weights (a plain callable's) gives every counted member the same share.
    """
    members = counted_members(spec)
    raw = {m: float((spec.get("weights") or {}).get(m, 1.0)) for m in members}
    total = sum(abs(w) for w in raw.values())
    return {m: w / total for m, w in raw.items()} if total > 0 else {}


def agreement_threshold(spec: dict[str, Any]) -> float:
    """The threshold the ensemble stage recorded; a spec fitted before it was recorded gets the params default."""
    default = EnsembleParams.model_fields["agreement_threshold"].default
    return float(spec.get("agreement_threshold", default))


def file_agreement(member_scores: dict[str, np.ndarray], fake: bool, cfg: AggregationParams,
                   weights: dict[str, float] | None = None) -> float | None:
    """Share of the fusion's weight whose members' labels for one file agree with the ensemble's (`fake`).

    Args:
        member_scores: Counted member -> its calibrated P(fake) per crop of the file.
        fake: The ensemble's label for the file.
        cfg: The aggregation rule the ensemble's file score used.
        weights: Member -> signed fusion share (`member_weights`); None: one equal vote each.

    Returns:
        The agreeing share in [0, 1]; None without members.
    """
    if not member_scores:
        return None
    shares = weights or dict.fromkeys(member_scores, 1.0)
    agreeing = 0.0
    for m, scores in member_scores.items():
        says_fake = aggregate(np.asarray(scores, dtype=float), cfg) >= MEMBER_THRESHOLD
        if says_fake == (fake == (shares[m] > 0)):  # a negative share agrees by saying the opposite
            agreeing += abs(shares[m])
    return float(agreeing / sum(abs(shares[m]) for m in member_scores))


def is_uncertain(agreement: float | None, threshold: float) -> bool:
    """Below the threshold (a file without counted members has no agreement and is never uncertain)."""
    return agreement is not None and agreement < threshold


def file_agreements(frames: pd.DataFrame, spec: dict[str, Any], threshold: float) -> pd.DataFrame:
    """One row per `sample_id`: `label`, the ensemble's file score `prob`, its label `fake`, and `agreement`.

    Args:
        frames: Crop rows with `sample_id`, `label`, `prob` (the final P(fake)) and each member's raw P(fake) in a
            column named after it (predictions.parquet, or a scored evaluation dataset).
        spec: ensemble.json (members, weights, calibration, aggregation).
        threshold: The ensemble's decision threshold on `prob`.
    """
    cfg = AggregationParams(**spec.get("aggregation", {}))
    members = counted_members(spec)
    calibration = spec.get("calibration") or {}
    cols = {m: calibrate(frames[m].to_numpy(), calibration.get(m, [1.0, 0.0])) for m in members}
    wide = pd.DataFrame({"sample_id": frames["sample_id"].to_numpy(), "label": frames["label"].to_numpy(),
                         "prob": frames["prob"].to_numpy(), **{f"member:{m}": v for m, v in cols.items()}})
    agg = {"label": ("label", "first"),
           **{c: (c, lambda s: aggregate(s.to_numpy(), cfg)) for c in wide.columns if c not in ("sample_id", "label")}}
    files = wide.groupby("sample_id", as_index=False, sort=True).agg(**agg)
    files["fake"] = files["prob"] >= threshold
    if members:
        shares = member_weights(spec)
        w = np.array([shares[m] for m in members])
        votes = np.column_stack([files[f"member:{m}"].to_numpy() >= MEMBER_THRESHOLD for m in members])
        # A negative share's member agrees when its label is the opposite of the ensemble's.
        agrees = votes == (files["fake"].to_numpy()[:, None] == (w > 0)[None, :])
        files["agreement"] = agrees @ np.abs(w) / np.abs(w).sum()
    else:
        files["agreement"] = np.nan
    return files.drop(columns=[f"member:{m}" for m in members])


def agreement_summary(frames: pd.DataFrame, spec: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The share of files below the agreement threshold (`uncertain_share`: what the gate bounds) and how the
    ensemble fares on the files the members agree and disagree on (is `uncertain` worth a reviewer's look?)."""
    bound = agreement_threshold(spec)
    files = file_agreements(frames, spec, threshold)
    members = counted_members(spec)
    out: dict[str, Any] = {"threshold": bound, "members": members, "weights": member_weights(spec),
                           "files": len(files)}
    if not members or files.empty:
        return {**out, "uncertain": None, "uncertain_share": None,
                "detail": "no member with a non-zero weight" if not members else "no file"}
    uncertain = files["agreement"] < bound
    right = files["fake"] == (files["label"] == 1)
    out.update(uncertain=int(uncertain.sum()), uncertain_share=float(uncertain.mean()),
               mean_agreement=float(files["agreement"].mean()),
               accuracy_agreed=float(right[~uncertain].mean()) if (~uncertain).any() else None,
               accuracy_uncertain=float(right[uncertain].mean()) if uncertain.any() else None)
    return out
