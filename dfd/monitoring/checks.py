"""Judging a window of served traffic against the production model's reference.

Three signals, each with its threshold in `monitor:`: Evidently's share of drifted image columns (the same report as
the evaluate stage's, `dfd.evaluation.drift.drift_report`), the shift of the P(fake) distribution, and the no-face
rate against the training data's. The P(fake) alert needs all three of: PSI above `monitor.max_psi`, the chi-square
p-value on PSI's own bins below `monitor.psi_alpha`, and the K-S p-value below `monitor.ks_alpha`
(`dfd.monitoring.psi`: tie-aware bins, and a constant reference said in one line). A window with fewer than
`monitor.min_records` files gets no verdict, and says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from dfd.evaluation.drift import STAT_COLUMNS, ReportError, drift_report
from dfd.monitoring.psi import psi_test
from dfd.platform.config import MonitorParams
from dfd.serving.tracks import ABSTAIN_REASONS

# Reasons that mean the file itself could not be read as media (no_face is counted apart: the file was fine).
UNREADABLE = ("unreadable", "truncated", "unsupported", "empty", "too_long")


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference` over the reference's tie-aware quantile bins
    (`dfd.monitoring.psi.psi_test`, which gives its p-value too)."""
    return psi_test(reference, current, bins).psi


def score_shift(reference: np.ndarray, current: np.ndarray, cfg: MonitorParams) -> dict[str, Any]:
    """PSI with its chi-square p-value, the K-S test, and whether the three together raise the alert (`alert`)."""
    test = psi_test(reference, current, cfg.psi_bins)
    ks = ks_2samp(reference, current)
    return {"psi": test.psi, "psi_pvalue": test.p_value, "psi_bins_used": test.bins, "psi_note": test.note,
            "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "alert": bool(test.psi > cfg.max_psi and test.p_value < cfg.psi_alpha and ks.pvalue < cfg.ks_alpha)}


def alert_rule(cfg: MonitorParams) -> str:
    """The P(fake) alert rule in words (the weekly plot's legend and the alert say it)."""
    return (f"PSI > {cfg.max_psi} and chi-square p < {cfg.psi_alpha} (same bins) and K-S p < {cfg.ks_alpha}")


def drifted_columns(summary: dict[str, Any]) -> list[str]:
    """Columns Evidently found drifted: a p-value under its threshold, or a distance at or over it."""
    out = []
    for col, c in summary.get("columns", {}).items():
        p_value = "p_value" in str(c.get("method", ""))
        if c.get("threshold") is not None and (c["score"] < c["threshold"] if p_value
                                               else c["score"] >= c["threshold"]):
            out.append(col)
    return sorted(out)


def rates(records: pd.DataFrame) -> dict[str, float | None]:
    """No-face, unreadable and abstain shares of the files in `records` (abstain: faces too small or too few
    frames with one, `dfd.serving.tracks`: the file was fine, the model would not judge it), and the uncertain
    share of their scored files (members disagree: `dfd.evaluation.agreement`) among those recorded with an
    agreement (None when none was: records written before agreement was recorded, or a model that gives no member
    scores)."""
    n = max(len(records), 1)
    judged = (records[records["p_fake"].notna() & records["agreement"].notna()]
              if {"agreement", "status"} <= set(records.columns) else records.iloc[:0])
    return {"no_face_rate": float((records["reason"] == "no_face").sum() / n),
            "unreadable_rate": float(records["reason"].isin(UNREADABLE).sum() / n),
            "abstain_rate": float(records["reason"].isin(ABSTAIN_REASONS).sum() / n),
            "uncertain_rate": float((judged["status"] == "uncertain").mean()) if len(judged) else None}


def judge(records: pd.DataFrame, ref_images: pd.DataFrame, ref_scores: pd.DataFrame, ref_meta: dict[str, Any],
          cfg: MonitorParams, out_dir: Path) -> dict[str, Any]:
    """The window's numbers and verdict; writes `drift.html` into `out_dir` when there is enough to compare.

    Returns:
        `status` (`ok`, `drift` or `too_few_records`), `records`, `scored`, the rates, `psi`, `ks_statistic`,
        `ks_pvalue`, `drift` (Evidently's summary with `drifted` column names), `alerts` (one line per crossed
        threshold) and `message`.
    """
    scored = records[records["p_fake"].notna()]  # uncertain files are scored (their reason says why to look again)
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
    shift = score_shift(ref_scores["p_fake"].to_numpy(), scored["p_fake"].to_numpy(), cfg)
    out.update({k: v for k, v in shift.items() if k not in ("alert", "psi_note")})
    if shift["psi_note"]:
        out["psi_note"] = shift["psi_note"]
    if shift["alert"]:
        out["alerts"].append(f"P(fake) distribution shifted: PSI {out['psi']:.3f} > monitor.max_psi {cfg.max_psi} "
                             f"(chi-square p={out['psi_pvalue']:.2g} < {cfg.psi_alpha}, K-S {out['ks_statistic']:.3f}"
                             f" p={out['ks_pvalue']:.2g} < {cfg.ks_alpha})")
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


def weekly_series(records: pd.DataFrame, ref_scores: pd.DataFrame, cfg: MonitorParams) -> pd.DataFrame:
    """Per ISO week (starting Monday, UTC): files, scored files, mean P(fake), PSI with its chi-square and K-S
    p-values and whether the alert rule fired (`psi_alert`), no-face, unreadable and abstain rates, and the share of
    scored files whose members disagree (`uncertain_rate`)."""
    cols = ["week", "records", "scored", "mean_p_fake", "psi", "psi_pvalue", "ks_pvalue", "psi_alert",
            "no_face_rate", "unreadable_rate", "abstain_rate", "uncertain_rate"]
    if records.empty:
        return pd.DataFrame(columns=cols)
    week = records["time"].dt.tz_convert("UTC").dt.tz_localize(None).dt.to_period("W-SUN").dt.start_time
    rows = []
    for start, g in records.groupby(week, sort=True):
        scored = g[g["p_fake"].notna()]  # an uncertain file (members disagree) is scored: it has a P(fake)
        shift = (score_shift(ref_scores["p_fake"].to_numpy(), scored["p_fake"].to_numpy(), cfg) if len(scored)
                 else {"psi": np.nan, "psi_pvalue": np.nan, "ks_pvalue": np.nan, "alert": False})
        # A week with fewer scored files than `monitor.min_records` gets no verdict, as `judge` gives none.
        rows.append({"week": start.date().isoformat(), "records": len(g), "scored": len(scored),
                     "mean_p_fake": float(scored["p_fake"].mean()) if len(scored) else np.nan,
                     "psi": shift["psi"], "psi_pvalue": shift["psi_pvalue"], "ks_pvalue": shift["ks_pvalue"],
                     "psi_alert": bool(shift["alert"] and len(scored) >= cfg.min_records), **rates(g)})
    return pd.DataFrame(rows, columns=cols)


def weekly_plot(series: pd.DataFrame, path: Path, cfg: MonitorParams) -> Path:
    """PSI of P(fake) with the weeks the alert rule fired marked, the p-values beside it against their levels, and
    the no-face/unreadable/abstain/uncertain rates per week."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, (top, mid, bottom) = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True)
    x = series["week"].tolist()
    top.plot(x, series["psi"], marker="o", label="PSI of P(fake)")
    top.axhline(cfg.max_psi, color="red", linestyle="--", label=f"monitor.max_psi {cfg.max_psi}")
    fired = series["psi_alert"].astype(bool).to_numpy()
    if fired.any():
        top.scatter([w for w, f in zip(x, fired, strict=True) if f], series["psi"][fired], s=120, facecolors="none",
                    edgecolors="red", linewidths=2, zorder=3, label="alert fired")
    top.set_ylabel("PSI")
    top.set_title(f"alert: {alert_rule(cfg)}", fontsize=9)
    top.legend(loc="upper left", fontsize=8)
    mid.plot(x, series["psi_pvalue"], marker="o", label="chi-square p (PSI's bins)")
    mid.plot(x, series["ks_pvalue"], marker="s", label="K-S p")
    mid.axhline(cfg.psi_alpha, color="red", linestyle="--", label=f"monitor.psi_alpha {cfg.psi_alpha}")
    if cfg.ks_alpha != cfg.psi_alpha:
        mid.axhline(cfg.ks_alpha, color="orange", linestyle=":", label=f"monitor.ks_alpha {cfg.ks_alpha}")
    mid.set_yscale("log")
    mid.set_ylabel("p-value")
    mid.legend(loc="lower left", fontsize=8)
    bottom.plot(x, series["no_face_rate"], marker="o", label="no-face rate")
    bottom.plot(x, series["unreadable_rate"], marker="s", label="unreadable rate")
    bottom.plot(x, series["abstain_rate"], marker="v", label="abstain rate (faces too small, too few frames)")
    bottom.plot(x, series["uncertain_rate"], marker="^", label="uncertain rate (members disagree)")
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
