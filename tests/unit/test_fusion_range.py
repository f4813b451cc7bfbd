"""Fusion clips each member to the range it was fitted on; post-fusion calibration keeps the fused ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfd.evaluation.calibration import apply_post_calibration, fit_post_calibration
from dfd.evaluation.fusion import FitContext, apply_fusion, fit_fusion
from tests.helpers import tiny_params


def _two_members(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A `good` member and a `wild` one, both informative inside [0.3, 0.7] (the demo's narrow member bands)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    good = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.08, n), 0.3, 0.7)
    wild = np.clip(0.5 + (y - 0.5) * 0.2 + rng.normal(0, 0.08, n), 0.3, 0.7)
    return np.column_stack([good, wild]), y


def test_a_member_beyond_its_fitted_range_cannot_outvote_the_rest(tmp_path: Path) -> None:
    """A crop that drives one member far below anything seen in fitting (as one demo test identity drove the
    EfficientNet members to P(fake) ~0.00) is stacked as if that member gave its lowest fitted score."""
    X, y = _two_members(400, 0)
    cfg = tiny_params(tmp_path, ensemble={"trials": 5}).ensemble
    for mixture in ("weighted_average", "confidence"):  # convex mixtures: bounded, so nothing is clipped
        assert "member_range" not in fit_fusion(mixture, X, y, FitContext(cfg, ["good", "wild"]))
    fitted = fit_fusion("stacking", X, y, FitContext(cfg, ["good", "wild"]))
    assert fitted["member_range"] == {"good": [X[:, 0].min(), X[:, 0].max()], "wild": [X[:, 1].min(), X[:, 1].max()]}
    inside = np.array([[0.68, 0.5], [0.35, 0.5]])
    assert np.array_equal(apply_fusion(fitted, inside), apply_fusion({**fitted, "member_range": None}, inside))
    beyond = np.array([[0.68, 1e-9]])  # the good member is sure it is fake; the wild one is out of its range
    at_edge = np.array([[0.68, X[:, 1].min()]])
    clipped = apply_fusion(fitted, beyond)
    assert clipped == pytest.approx(apply_fusion(fitted, at_edge))
    # unclipped, the linear term extrapolates the wild logit (-20.7) and outvotes `good`
    unclipped = apply_fusion({k: v for k, v in fitted.items() if k != "member_range"}, beyond)
    assert unclipped[0] < 0.05 < clipped[0]


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_post_calibration_keeps_the_ranking_of_tiny_fused_scores(method: str) -> None:
    """A saturated stacking score reaches 1e-12 and below: the monotone calibration must not tie such frames."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    z = (y - 0.5) * 20 + rng.normal(0, 4, 300)  # fused logits out to about -20
    fitted = fit_post_calibration(method, 1 / (1 + np.exp(-z)), y)
    scores = np.array([1e-13, 1e-11, 1e-9, 1e-7, 1e-5, 0.3, 0.6, 0.9, 1 - 1e-9])
    out = apply_post_calibration(fitted, scores)
    assert np.all(np.diff(out) > 0)
