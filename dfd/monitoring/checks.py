"""Judging a window of served traffic against the production model's reference.

Three signals, each with its threshold in `monitor:`: Evidently's share of drifted image columns (the same report as
the evaluate stage's, `dfd.evaluation.drift.drift_report`), the shift of the P(fake) distribution (population
stability index over the reference's quantile bins, alerting only when the two-sample K-S test is significant too),
and the no-face rate against the training data's. A window with fewer than `monitor.min_records` files gets no
verdict, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from dfd.evaluation.drift import STAT_COLUMNS, ReportError, drift_report
from dfd.platform.config import MonitorParams
from dfd.serving.tracks import ABSTAIN_REASONS

# Reasons that mean the file itself could not be read as media (no_face is counted apart: the file was fine).
UNREADABLE = ("unreadable", "truncated", "unsupported", "empty", "too_long")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, over the reference's quantile bins.

    Empty bins get a floor of 1e-4 so that a bin the window never reaches counts as a large shift, not infinity.
    """
    reference, current = np.asarray(reference, float), np.asarray(current, float)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / len(reference)
    cur = np.histogram(current, edges)[0] / len(current)
    ref, cur = np.clip(ref, 1e-4, None), np.clip(cur, 1e-4, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def drifted_columns(summary: dict[str, Any]) -> list[str]:
    """Columns Evidently found drifted: a p-value under its threshold, or a distance at or over it."""
    out = []
    for col, c in summary.get("columns", {}).items():
        p_value = "p_value" in str(c.get("method", ""))
        if c.get("threshold") is not None and (c["score"] < c["threshold"] if p_value
                                               else c["score"] >= c["threshold"]):
            out.append(col)
    return sorted(out)


def rates(records: pd.DataFrame) -> dict[str, float]:
    """No-face, unreadable and abstain shares of the files in `records` (abstain: faces too small or too few
    frames with one, `dfd.serving.tracks`: the file was fine, the model would not judge it)."""
    n = max(len(records), 1)
    return {"no_face_rate": float((records["reason"] == "no_face").sum() / n),
            "unreadable_rate": float(records["reason"].isin(UNREADABLE).sum() / n),
            "abstain_rate": float(records["reason"].isin(ABSTAIN_REASONS).sum() / n)}


def judge(records: pd.DataFrame, ref_images: pd.DataFrame, ref_scores: pd.DataFrame, ref_meta: dict[str, Any],
          cfg: MonitorParams, out_dir: Path) -> dict[str, Any]:
    """The window's numbers and verdict; writes `drift.html` into `out_dir` when there is enough to compare.

    Returns:
        `status` (`ok`, `drift` or `too_few_records`), `records`, `scored`, the rates, `psi`, `ks_statistic`,
        `ks_pvalue`, `drift` (Evidently's summary with `drifted` column names), `alerts` (one line per crossed
        threshold) and `message`.
    """
    scored = records[records["reason"].isna() & records["p_fake"].notna()]
    out: dict[str, Any] = {"records": len(records), "scored": len(scored), **rates(records),
                           "reference_no_face_rate": float(ref_meta.get("no_face_rate", 0.0)), "alerts": []}
    if len(records) < cfg.min_records:
        out.update(status="too_few_records",
                   message=f"too few records to judge: {len(records)} file(s) in the window, at least "
                           f"{cfg.min_records} needed (monitor.min_records); no verdict")
        return out
    jump = out["no_face_rate"] - out["reference_no_face_rate"]
    if jump > cfg.max_no_face_increase:
        out["alerts"].append(f"no-face rate {out['no_face_rate']:.2f} is {jump:.2f} above the training data's "
                             f"{out['reference_no_face_rate']:.2f} (monitor.max_no_face_increase "
                             f"{cfg.max_no_face_increase})")
    if len(scored) < cfg.min_records:
        out["status"] = "drift" if out["alerts"] else "ok"
        out["message"] = (f"{len(scored)} scored file(s): too few to judge drift (at least {cfg.min_records}); "
                          "rates judged only")
        return out
    out["psi"] = psi(ref_scores["p_fake"].to_numpy(), scored["p_fake"].to_numpy(), cfg.psi_bins)
    ks = ks_2samp(ref_scores["p_fake"].to_numpy(), scored["p_fake"].to_numpy())
    out["ks_statistic"], out["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
    if out["psi"] > cfg.max_psi and out["ks_pvalue"] < cfg.ks_alpha:
        out["alerts"].append(f"P(fake) distribution shifted: PSI {out['psi']:.3f} > monitor.max_psi {cfg.max_psi} "
                             f"(K-S {out['ks_statistic']:.3f}, p={out['ks_pvalue']:.2g} < {cfg.ks_alpha})")
    try:
        drift = drift_report(ref_images[STAT_COLUMNS], scored[STAT_COLUMNS].astype(float), out_dir / "drift.html")
    except ReportError as exc:  # e.g. every column constant: said, not judged
        out["drift"] = {"error": str(exc)}
    else:
        drift["drifted"] = drifted_columns(drift)
        out["drift"] = drift
        if drift["drifted_share"] > cfg.max_drift_share:
            out["alerts"].append(f"image statistics drifted: {drift['drifted_share']:.2f} of columns "
                                 f"({', '.join(drift['drifted']) or 'none'}) > monitor.max_drift_share "
                                 f"{cfg.max_drift_share}")
    out["status"] = "drift" if out["alerts"] else "ok"
    out["message"] = "; ".join(out["alerts"]) or "no drift"
    return out


def weekly_series(records: pd.DataFrame, ref_scores: pd.DataFrame, bins: int) -> pd.DataFrame:
    """Per ISO week (starting Monday, UTC): files, scored files, mean P(fake), PSI, no-face and unreadable rates."""
    cols = ["week", "records", "scored", "mean_p_fake", "psi", "no_face_rate", "unreadable_rate"]
    if records.empty:
        return pd.DataFrame(columns=cols)
    week = records["time"].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
    rows = []
    for start, g in records.groupby(week, sort=True):
        scored = g[g["reason"].isna() & g["p_fake"].notna()]
        rows.append({"week": start.date().isoformat(), "records": len(g), "scored": len(scored),
                     "mean_p_fake": float(scored["p_fake"].mean()) if len(scored) else np.nan,
                     "psi": psi(ref_scores["p_fake"].to_numpy(), scored["p_fake"].to_numpy(), bins) if len(scored)
                     else np.nan, **rates(g)})
    return pd.DataFrame(rows, columns=cols)


def weekly_plot(series: pd.DataFrame, path: Path, cfg: MonitorParams) -> Path:
    """PSI of P(fake) and the no-face/unreadable rates per week, with the alert thresholds drawn."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    x = series["week"].tolist()
    top.plot(x, series["psi"], marker="o", label="PSI of P(fake)")
    top.axhline(cfg.max_psi, color="red", linestyle="--", label=f"monitor.max_psi {cfg.max_psi}")
    top.set_ylabel("PSI")
    top.legend(loc="upper left", fontsize=8)
    bottom.plot(x, series["no_face_rate"], marker="o", label="no-face rate")
    bottom.plot(x, series["unreadable_rate"], marker="s", label="unreadable rate")
    bottom.set_ylabel("share of files")
    bottom.set_ylim(0, 1)
    bottom.legend(loc="upper left", fontsize=8)
    bottom.tick_params(axis="x", rotation=45)
    fig.suptitle("served traffic by week")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
