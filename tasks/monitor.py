"""monitor: judge the served traffic of a window against the production model's reference, record it, alert.

Reads the traffic records under `monitor.log_dir` (`dfd serve`, `dfd predict --log`), the reference stored with the
production version at register (`monitoring/reference.*` of its run), and writes under
`<artifacts>/monitoring/<UTC time>/`: `monitor.json`, Evidently's `drift.html` and `weekly.png` (the weekly series).
The numbers go into an MLflow run tagged with the production version; a drifted window alerts on every enabled
channel. Records scored by another version (before a promotion) are counted but not judged: their P(fake) is not
this model's.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dfd.monitoring.checks import judge, weekly_plot, weekly_series
from dfd.monitoring.reference import load_reference
from dfd.monitoring.store import open_store
from dfd.monitoring.traffic import read_records, window_start
from dfd.platform.alerts import alert
from dfd.platform.config import Params
from dfd.platform.errors import DfdError
from dfd.platform.files import write_json
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorResult:
    """What `dfd monitor` found: `status` is ok, drift or too_few_records."""

    status: str
    message: str
    version: str
    out_dir: Path
    run_id: str
    summary: dict[str, Any] = field(default_factory=dict)
    alerts: dict[str, str] = field(default_factory=dict)  # channel -> delivered | failed | off

    @property
    def drifted(self) -> bool:
        return self.status == "drift"


def production_reference(params: Params, tracker: Tracker, dst: Path) -> tuple[dict[str, Any], Any]:
    """The production version and its reference (image rows, score rows, meta), downloaded into `dst`."""
    cfg = params.registry
    production = tracker.version_by_alias(cfg.model_name, cfg.alias)
    if production is None:
        raise DfdError(f"{cfg.model_name} has no @{cfg.alias} version: nothing to monitor",
                       "promote a version first (the register stage)")
    where = production["tags"].get("monitoring_reference")
    if not where:
        raise DfdError(f"{cfg.model_name} v{production['version']} was registered without a monitoring reference",
                       "register it again with this version of dfd (`dfd stage register`)")
    folder = tracker.download_artifacts(production["run_id"], where, dst)
    return production, load_reference(folder)


def headline(summary: dict[str, Any], version: str, since: str) -> str:
    """One screen: the window, the counts, the numbers, the verdict."""
    lines = [f"monitor: production v{version}, last {since}: {summary['records']} file(s), {summary['scored']} scored",
             f"  no-face rate {summary['no_face_rate']:.3f} (training {summary['reference_no_face_rate']:.3f}), "
             f"unreadable rate {summary['unreadable_rate']:.3f}, abstain rate {summary['abstain_rate']:.3f}",
             f"  uncertain rate {summary['uncertain_rate']:.3f} of scored files (members disagree)"
             if summary.get("uncertain_rate") is not None
             else "  uncertain rate: not recorded (no scored file with a member agreement)"]
    if "psi" in summary:
        lines.append(f"  P(fake): PSI {summary['psi']:.3f} (chi-square p={summary['psi_pvalue']:.2g}, "
                     f"{summary['psi_bins_used']} bins), K-S {summary['ks_statistic']:.3f} "
                     f"(p={summary['ks_pvalue']:.2g})")
        if summary.get("psi_note"):
            lines.append(f"  {summary['psi_note']}")
    drift = summary.get("drift", {})
    if "drifted_share" in drift:
        lines.append(f"  image columns drifted: {drift['drifted_share']:.2f} ({', '.join(drift['drifted']) or 'none'})")
    elif "error" in drift:
        lines.append(f"  image drift not judged: {drift['error']}")
    lines.append(f"  {summary['status']}: {summary['message']}")
    return "\n".join(lines)


def run(params: Params, layout: Layout, tracker: Tracker, since: str | None = None, parent_id: str | None = None,
        now: datetime | None = None) -> MonitorResult:
    """The stage, as `dfd monitor` and the weekly flow's first step call it."""
    cfg = params.monitor
    since = since or cfg.window
    now = now or datetime.now(UTC)
    start = window_start(since, now)
    if not cfg.log_dir:
        raise DfdError("monitor.log_dir is null: no traffic is recorded, so there is nothing to monitor",
                       "set monitor.log_dir (a folder or s3://bucket/prefix) and serve with `dfd serve`")
    store = open_store(cfg.log_dir, params.storage, layout.root)
    with tempfile.TemporaryDirectory(prefix="dfd-monitor-") as tmp:
        production, (ref_images, ref_scores, ref_meta) = production_reference(params, tracker, Path(tmp))
    version = production["version"]
    history = read_records(store, min(start, now - timedelta(weeks=cfg.weeks_plotted)), now)
    others = int((history["model_version"] != version).sum())
    history = history[history["model_version"] == version]
    records = history[history["time"] >= start]
    out_dir = layout.artifacts / "monitoring" / now.strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = judge(records, ref_images, ref_scores, ref_meta, cfg, out_dir)
    series = weekly_series(history, ref_scores, cfg)
    series.to_csv(out_dir / "weekly.csv", index=False)
    if len(series):
        weekly_plot(series, out_dir / "weekly.png", cfg)
    summary.update(window=since, since=start.isoformat(), until=now.isoformat(), model_version=version,
                   other_versions_records=others, log_dir=store.where,
                   reference_rows={"image": len(ref_images), "score": len(ref_scores)})
    deliveries: dict[str, str] = {}
    tags = {"model_name": params.registry.model_name, "model_version": version, "monitor_status": summary["status"],
            "monitor_window": since}
    with tracker.run("monitor", parent_id, tags) as rid:
        metrics = {k: summary[k] for k in ("records", "scored", "no_face_rate", "unreadable_rate", "abstain_rate",
                                           "uncertain_rate", "psi", "psi_pvalue", "ks_statistic", "ks_pvalue")
                   if summary.get(k) is not None}  # None: not measured
        if "drifted_share" in summary.get("drift", {}):
            metrics["drifted_share"] = summary["drift"]["drifted_share"]
            metrics.update({f"drift_score.{c}": v["score"] for c, v in summary["drift"]["columns"].items()})
        tracker.log_metrics(rid, metrics)
        if summary["status"] == "drift":
            subject = f"[dfd] drift in served traffic: {params.registry.model_name} v{version}"
            body = "\n".join([f"Served traffic of the last {since} ({summary['records']} files) drifted from what "
                              f"v{version} was trained on:", *(f"  {a}" for a in summary["alerts"]), "",
                              f"Report: {out_dir / 'drift.html'}", ""])
            deliveries = dict(alert(params.alerts, subject, body))
            tracker.set_tags(rid, {f"alert_{k}": v for k, v in deliveries.items()})
        summary["alert_deliveries"] = deliveries
        write_json(out_dir / "monitor.json", summary)
        tracker.log_artifact(rid, out_dir, "monitoring")
    log.info("monitor: %s (%s)", summary["status"], summary["message"])
    return MonitorResult(summary["status"], summary["message"], version, out_dir, rid, summary, deliveries)
