"""PSI with its null, against known truth: no drift alerts at most at the level, a shift is found, ties and a
constant reference are handled and said (fixed seeds; vectorised enough for seconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from dfd.monitoring.checks import score_shift, weekly_plot, weekly_series
from dfd.monitoring.psi import cuts, psi_test
from dfd.platform.config import MonitorParams

CFG = MonitorParams()
RUNS = 300  # at a 5% rate the standard error is 0.013: the tolerance 0.035 is 2.7 of them


def _scores(rng: np.random.Generator, n: int, fake_share: float = 0.4) -> np.ndarray:
    """P(fake) of served files as a detector spreads them: reals near 0, fakes near 1."""
    fake = rng.random(n) < fake_share
    return np.where(fake, rng.beta(6, 1.5, n), rng.beta(1.5, 6, n))


def _isotonic(rng: np.random.Generator, n: int, fake_share: float = 0.4) -> np.ndarray:
    """Isotonic calibration's output: five levels."""
    return np.round(np.clip(_scores(rng, n, fake_share), 0, 0.999) * 5 - 0.5) / 5 + 0.1


def test_without_drift_the_alert_holds_its_level_where_raw_psi_did_not() -> None:
    alerts, chi_rejects, raw = 0, 0, 0
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        shift = score_shift(_scores(rng, 300), _scores(rng, 50), CFG)  # 300 reference files, a 50-file week
        alerts += shift["alert"]
        chi_rejects += shift["psi_pvalue"] < CFG.psi_alpha
        raw += shift["psi"] > CFG.max_psi
    assert alerts / RUNS <= CFG.psi_alpha + 0.035
    assert chi_rejects / RUNS <= CFG.psi_alpha + 0.035  # the chi-square test on PSI's bins holds its level
    assert raw / RUNS >= 0.2  # PSI alone crossed 0.25 in about a third of unshifted weeks


def test_tied_scores_keep_their_levels_and_the_level_holds() -> None:
    rng = np.random.default_rng(0)
    ref = _isotonic(rng, 300)
    assert len(np.unique(ref)) == 5 and psi_test(ref, ref).bins == 5  # each level its own bin (quantiles left 3)
    assert len(np.unique(np.quantile(ref, np.linspace(0, 1, 11)))) - 1 < 5  # what the old bins did
    rejects = sum(score_shift(_isotonic(r, 300), _isotonic(r, 50), CFG)["psi_pvalue"] < CFG.psi_alpha
                  for r in (np.random.default_rng(s) for s in range(RUNS)))
    assert rejects / RUNS <= CFG.psi_alpha + 0.035
    many = np.repeat(np.linspace(0, 1, 40), 10)  # more levels than bins: cuts fall between levels, never inside one
    edges = cuts(many, 10)
    assert set(edges) <= set(np.unique(many)) and len(edges) == 9


def test_a_shift_of_the_fake_share_is_found() -> None:
    found = 0
    for seed in range(RUNS):
        rng = np.random.default_rng(seed)
        found += score_shift(_scores(rng, 300, 0.4), _scores(rng, 50, 0.8), CFG)["alert"]  # 40% -> 80% fakes
    assert found / RUNS >= 0.9


def test_a_constant_reference_is_said_in_one_line() -> None:
    ref = np.full(200, 0.73)
    same, moved = psi_test(ref, np.full(50, 0.73)), psi_test(ref, np.r_[np.full(25, 0.73), np.full(25, 0.2)])
    assert same.psi == 0 and same.p_value == 1.0 and "constant (0.73)" in same.note and "\n" not in same.note
    assert moved.psi > CFG.max_psi and moved.p_value < 1e-6 and moved.bins == 3


def test_the_weekly_series_marks_the_weeks_the_rule_fired(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"p_fake": _scores(rng, 300)})
    monday = datetime(2026, 11, 2, 12, tzinfo=UTC)
    weeks = [(monday, _scores(rng, 60)), (monday + timedelta(weeks=1), _scores(rng, 60, 0.9)),
             (monday + timedelta(weeks=2), _scores(rng, 10, 0.9))]  # the last: too few files for a verdict
    records = pd.DataFrame([{"time": t, "reason": None, "p_fake": p} for t, scores in weeks for p in scores])
    series = weekly_series(records, ref, CFG)
    assert series["psi_alert"].tolist() == [False, True, False]
    assert series["psi_pvalue"].iloc[1] < CFG.psi_alpha < series["psi_pvalue"].iloc[0]
    assert weekly_plot(series, tmp_path / "weekly.png", CFG).stat().st_size > 0
