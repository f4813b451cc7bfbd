"""register: decide the gate, register the ensemble as `candidate`, and promote it to `production` only on a pass.

Order: (1) a candidate whose lineage equals production's is not registered again; (2) the ensemble is logged as a
pyfunc, registered, tagged with its lineage and given the `candidate` alias; (3) the gate runs every check of
`evaluate.gate` on the evaluate stage's reports, champion/challenger included; (4) on a pass `production` moves to
the new version in one call and the version it left becomes `previous`; on a fail nothing moves and the new version
is tagged `rejected`. `gate.json` and `registry.json` record all of it.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from dfd.data.demo_data import DEMO_MARKER
from dfd.data.face_detect import DETECTOR_PACKAGES
from dfd.data.manifest import SPLIT_SCHEME_TAG
from dfd.data.provenance import run_lineage
from dfd.evaluation.champion import champion_comparison, sample_videos
from dfd.evaluation.compare import load_crops, score
from dfd.evaluation.gate import decide, served_rule_check
from dfd.evaluation.model_card import TRAINING_DATA_TAG, CardInputs, model_card
from dfd.monitoring.reference import REFERENCE_ARTIFACT_DIR, build_reference
from dfd.platform.config import AggregationParams, ExportParams, GateParams, Params, RegistryParams, ServeParams
from dfd.platform.errors import DfdError, StageError
from dfd.platform.files import read_json, write_json
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker
from dfd.platform.uris import safe_uri
from dfd.serving.onnx_export import export_members, served_engine

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_CODE = PROJECT_ROOT / "dfd" / "serving" / "pyfunc_model.py"  # the served model, logged as code (see that file)
# What the served model imports, pinned to this environment's versions; the face detectors' packages (every family
# `faces.detector` and `faces.fallback` may name) because the served model extracts faces from raw media.
SERVING_PACKAGES = ("torch", "timm", "albumentations", "opencv-python-headless", "numpy", "pandas", "pydantic",
                    "pyyaml", "scikit-learn", "mlflow",
                    *dict.fromkeys(p for pkgs in DETECTOR_PACKAGES.values() for p in pkgs))
# The lineage that says "same code, same data, same params": equal on a candidate and production = nothing changed.
LINEAGE_KEYS = ("git_commit", "dvc_data_hash", "params_hash")


@dataclass(frozen=True)
class RegisterResult:
    """The registered version (or the production one, when nothing changed), the gate, and what moved."""

    model_name: str
    version: str
    promoted: bool
    alias: str
    record: Path
    run_id: str
    gate: dict[str, Any] = field(default_factory=dict)
    passed: bool = False
    registered: bool = True  # False: the lineage equals production's, no new version
    previous: str | None = None  # the production version this promotion replaced
    message: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _requirements(extra: tuple[str, ...] = ()) -> list[str]:
    reqs = []
    for pkg in (*SERVING_PACKAGES, *extra):
        try:
            reqs.append(f"{pkg}=={importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _input_example(faces_index: Path, n: int = 2) -> np.ndarray:
    index = pd.read_parquet(faces_index)
    rows = index[index["split"] == "test"].head(n)
    crops = [cv2.cvtColor(cv2.imread(str(faces_index.parent / c)), cv2.COLOR_BGR2RGB) for c in rows["crop"]]
    return np.stack(crops).astype(np.uint8)


def comparable_lineage(tags: dict[str, str]) -> tuple[str, ...] | None:
    """The lineage key of a run or version; None when it cannot prove "unchanged" (unknown or dirty commit)."""
    values = tuple(tags.get(k, "") for k in LINEAGE_KEYS)
    commit = values[0]
    if not all(values) or commit == "unknown" or commit.endswith("-dirty") or "unknown" in values:
        return None
    return values


def split_scheme_skip(production: dict[str, Any], scheme: str | None) -> str | None:
    """Why the champion comparison cannot be a paired test on this test split, or None when it can.

    A production version whose splits were made by another scheme (`dfd.data.manifest.SPLIT_SCHEME`, recorded as
    the `split_scheme` tag; versions from before it have none) may have trained on samples of today's test split:
    a paired test would measure memory, not skill. Its first successor is judged by the absolute checks alone.
    """
    theirs = production.get("tags", {}).get(SPLIT_SCHEME_TAG) or "identity-hash (before persons-1)"
    if scheme and theirs != scheme:
        return (f"champion v{production['version']} was trained on splits of scheme {theirs!r}, this candidate on "
                f"{scheme!r}: the champion may have trained on this test split, so no paired test is run (the "
                "absolute checks decide this once; the next comparison is paired again)")
    return None


def champion_summary(tracker: Tracker, production: dict[str, Any], model_name: str, ensemble_dir: Path,
                     faces_index: Path, gate: GateParams, aggregation: AggregationParams | None = None,
                     split_scheme: str | None = None) -> dict[str, Any]:
    """Score the production version on the candidate's test crops and compare their AUCs (candidate - champion).

    The candidate's scores are its evaluated ensemble predictions (the `prob` column of predictions.parquet); the
    champion is loaded from the registry and scores the same crops, so both are judged on identical samples, at the
    level the gate reports (see `dfd.evaluation.champion`). Whole test samples are drawn, up to
    `champion.max_videos`. A champion split by another scheme than `split_scheme` is not compared (`skipped`).
    """
    cfg = gate.champion
    out: dict[str, Any] = {"version": production["version"], "run_id": production["run_id"],
                           "model_uri": f"models:/{model_name}/{production['version']}", "policy": cfg.policy}
    skip = split_scheme_skip(production, split_scheme)
    if skip:
        return {**out, "skipped": skip}
    preds = pd.read_parquet(ensemble_dir / "predictions.parquet")
    index = pd.read_parquet(faces_index)
    extra = [c for c in ("crop", "identity", "persons", "media") if c in index and (c == "crop" or c not in preds)]
    on = [c for c in ("sample_id", "frame", "track") if c in preds and c in index]  # track: one crop per face
    test = preds[preds["split"] == "test"].merge(index[[*on, *extra]], on=on, how="left")
    if test["crop"].isna().any():
        raise StageError(f"{int(test['crop'].isna().sum())} test prediction(s) have no crop in {faces_index}",
                         "rerun the faces, ensemble and evaluate stages")
    out["n_videos_available"] = int(test["sample_id"].nunique())
    rows = sample_videos(test, cfg.max_videos, cfg.seed)
    crops = load_crops(rows["crop"], faces_index.parent)  # an unreadable crop is the data's fault: a stage error
    try:
        rows["champion"] = score(tracker.load_pyfunc(out["model_uri"]), crops)
    except Exception as exc:  # a champion that no longer loads or scores must not pass silently, nor crash the stage
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    return {**out, **champion_comparison(rows, cfg, aggregation or AggregationParams())}


def _dataset_hashes(reports_dir: Path) -> dict[str, str]:
    """DVC hashes of the evaluation datasets the evaluate stage read (cross_dataset.json rows with `data_hash`)."""
    path = reports_dir / "cross_dataset.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    rows = data.get("datasets", data) if isinstance(data, dict) else {}
    items = rows.items() if isinstance(rows, dict) else ((r.get("dataset"), r) for r in rows if isinstance(r, dict))
    return {f"dvc_data_hash.{name}": str(r["data_hash"]) for name, r in items
            if isinstance(r, dict) and r.get("data_hash") and name}


def _record(path: Path, res: RegisterResult, tracker: Tracker, tags: dict[str, Any]) -> RegisterResult:
    write_json(path, {"model_name": res.model_name, "version": res.version, "registered": res.registered,
                      "promoted": res.promoted, "passed": res.passed, "alias": res.alias, "previous": res.previous,
                      "message": res.message, "model_uri": f"models:/{res.model_name}/{res.version}",
                      "run_id": res.run_id, "tags": tags, "tracking_uri": safe_uri(tracker.tracking_uri),
                      "failed": res.gate.get("failed", [])})
    return res


# What the run that registers a version carries besides the model: (file in reports_dir, artifact folder).
CARD_ARTIFACTS = (("model_card.md", None), ("gate.json", None), ("metrics.json", "reports"),
                  ("robustness.json", "reports"), ("cross_dataset.json", "reports"), ("plots", "plots"),
                  ("evidently", "evidently"))


def _publish_card(tracker: Tracker, name: str, version: str, run_id: str, reports_dir: Path, inputs: dict[str, Any],
                  ) -> str:
    """Write model_card.md, log it with the plots and reports into the run, and set the version's description."""
    present = [(f, folder) for f, folder in CARD_ARTIFACTS if (reports_dir / f).exists() or f == "model_card.md"]
    card = CardInputs(model_name=name, version=version, run_id=run_id, experiment_id=tracker.experiment_id,
                      artifacts=[f"{folder}/{f}" if folder and folder != f else f for f, folder in present],
                      **inputs)
    full, description = model_card(card)
    (reports_dir / "model_card.md").write_text(full, encoding="utf-8")
    for f, folder in present:
        tracker.log_artifact(run_id, reports_dir / f, folder)
    tracker.set_version_description(name, version, description)
    return description


def training_summary(layout: Layout) -> dict[str, Any]:
    """What the card says about the training data: the ingest report's counts, the manifest's fake methods."""
    report = read_json(layout.ingest_report) if layout.ingest_report.is_file() else {}
    methods: dict[str, int] = {}
    if layout.manifest.is_file():
        manifest = pd.read_parquet(layout.manifest, columns=["label", "method"])
        methods = {str(k): int(v) for k, v in manifest.loc[manifest["label"] == 1, "method"].value_counts().items()}
    return {"per_split": report.get("per_split", {}), "identities": report.get("identities", {}), "methods": methods,
            "clusters": report.get("clusters", {}), "split_scheme": report.get("split_scheme", "")}
def _weights_tags(model_dirs: dict[str, Path], members: list[str]) -> dict[str, str]:
    """Each member's pretrained start (weights name and sha256, from its metrics.json), for the version's lineage."""
    tags = {}
    for m in members:
        path = model_dirs[m] / "metrics.json"
        start = (read_json(path).get("pretrained") if path.is_file() else None) or {}
        weights = start.get("weights") or ([{"name": start["source"], "sha256": start.get("sha256")}]
                                           if start.get("source") else [])
        if weights:
            # No hash only when timm loaded from its own cache: say where it came from instead of inventing one.
            tags[f"weights_{m}"] = ",".join(f"{w['name']}@" + (f"sha256:{w['sha256']}" if w.get("sha256")
                                                              else f"{w.get('file', 'timm cache')} (not hashed)")
                                            for w in weights)
    return tags


def register(cfg: RegistryParams, gate_cfg: GateParams, reports_dir: Path, ensemble_dir: Path,
             model_dirs: dict[str, Path], faces_index: Path, tracker: Tracker, run_id: str, tags: dict[str, str],
             record_path: Path, aggregation: AggregationParams | None = None,
             card: dict[str, Any] | None = None, reference_samples: int = 2000, export: ExportParams | None = None,
             serve: ServeParams | None = None) -> RegisterResult:
    """Register the ensemble, decide the gate, and move the aliases.

    Args:
        cfg: Registered model name and aliases.
        gate_cfg: The gate's checks and thresholds.
        reports_dir: Holds metrics.json and robustness.json from evaluate; gate.json is written here.
        ensemble_dir: Holds ensemble.json and predictions.parquet.
        model_dirs: Each member's folder (best.pt).
        faces_index: For the input example and the champion's crops.
        tracker: The MLflow service.
        run_id: The run the model is logged in.
        tags: Lineage (git commit, DVC data hashes, params hash, flow run id) set on the model version.
        record_path: Where `registry.json` goes.
        aggregation: Frames to videos for the champion comparison (`ensemble.aggregation`; default: its defaults).
        card: The model card's other inputs (`training`, `synthetic`; see `CardInputs`); None: a card without them.
        reference_samples: Training samples in the version's monitoring reference (`monitor.reference_max_samples`).
        export: `ensemble.export`: the members as ONNX (and int8) files logged with the version, and the int8 gate
            row; None: none.
        serve: `serve`: the engine the logged model runs by default (`served_engine`).
    """
    spec_path, metrics_path = ensemble_dir / "ensemble.json", reports_dir / "metrics.json"
    for p in (spec_path, metrics_path):
        if not p.is_file():
            raise StageError(f"not found: {p}", "run the ensemble and evaluate stages first")
    spec, metrics = read_json(spec_path), read_json(metrics_path)
    robustness = read_json(reports_dir / "robustness.json") if (reports_dir / "robustness.json").is_file() else None
    gate_path = reports_dir / "gate.json"
    production = tracker.version_by_alias(cfg.model_name, cfg.alias)
    file_rule = (serve or ServeParams()).file_rule  # the gate's `served_rule` row: judged by evaluate, or a failure

    key = None if tags.get("retrain_trigger") else comparable_lineage(tags)  # a forced retraining is gated anew
    if production and key is not None and key == comparable_lineage(production["tags"]):
        v = production["version"]
        message = f"nothing changed since version {v} (same git commit, data hash and params hash): not registered"
        gate = decide(gate_cfg, metrics, robustness, {"version": v, "run_id": production["run_id"],
                                                       "same_lineage": True, "detail": message}, file_rule=file_rule)
        write_json(gate_path, gate)
        log.info(message)
        return _record(record_path, RegisterResult(cfg.model_name, v, False, cfg.alias, record_path, run_id, gate,
                                                   bool(gate["passed"]), False, None, message), tracker, tags)

    artifacts = {"ensemble": str(spec_path)}
    for m in spec["members"]:
        ckpt = model_dirs[m] / "best.pt"
        if not ckpt.is_file():
            raise StageError(f"checkpoint of member '{m}' not found: {ckpt}", f"run `dfd stage train --model {m}`")
        artifacts[f"member_{m}"] = str(ckpt)
    faces_report = faces_index.parent / "faces_report.json"  # its `params`: how the served model extracts faces
    if faces_report.is_file():
        artifacts["faces"] = str(faces_report)
    with tempfile.TemporaryDirectory(prefix="dfd-onnx-") as onnx_dir:  # MLflow copies the files it logs
        onnx = export_members(export, spec, artifacts, faces_index, Path(onnx_dir), reports_dir)
        version = tracker.log_pyfunc_model(
            run_id, MODEL_CODE, artifacts, _input_example(faces_index), _requirements(("onnxruntime",) if onnx else ()),
            [str(PROJECT_ROOT / "models"), str(PROJECT_ROOT / "dfd")], cfg.model_name, served_engine(serve, onnx))
    ens = metrics.get("ensemble", {})
    card = card or {}
    version_tags: dict[str, Any] = {**tags, **_dataset_hashes(reports_dir), "mlflow_run_id": run_id,
                                    "members": ",".join(spec["members"]), **_weights_tags(model_dirs, spec["members"]),
                                    TRAINING_DATA_TAG: "synthetic" if card.get("synthetic") else "ingested",
                                    # What the gate judged when the test split had no real fake (tasks/evaluate.py).
                                    **({"test_fakes": metrics["test_fakes"],
                                        "gate_judged_on": metrics.get("gate_judged_on", "")}
                                       if metrics.get("test_fakes", "real") != "real" else {}),
                                    **{f"test_{k}": f"{ens[k]:.4f}" for k in ("auc", "video_auc", "eer", "ece")
                                       if isinstance(ens.get(k), int | float)},
                                    **({"onnx_members": ",".join(onnx["files"])} if onnx else {}),
                                    # The rule the model is served with, and whether the evaluate stage judged it.
                                    "file_rule": file_rule, "file_rule_judged": str(
                                        served_rule_check(metrics, file_rule).passed).lower()}
    # The statistics `dfd monitor` compares served traffic with, stored with the version they describe.
    with tempfile.TemporaryDirectory(prefix="dfd-reference-") as tmp:
        for path in build_reference(faces_index, ensemble_dir, Path(tmp), reference_samples):
            tracker.log_artifact(run_id, path, REFERENCE_ARTIFACT_DIR)
    version_tags["monitoring_reference"] = REFERENCE_ARTIFACT_DIR
    tracker.set_version_tags(cfg.model_name, version, version_tags)
    tracker.set_alias(cfg.model_name, cfg.candidate_alias, version)

    champion = None
    if production and gate_cfg.champion.policy != "off":
        champion = champion_summary(tracker, production, cfg.model_name, ensemble_dir, faces_index, gate_cfg,
                                    aggregation, tags.get(SPLIT_SCHEME_TAG))
    gate = decide(gate_cfg, metrics, robustness, champion, onnx, file_rule)
    if gate["champion"] is not None:
        gate["champion"]["challenger"] = {"version": version, "run_id": run_id}
    write_json(gate_path, gate)
    passed = bool(gate["passed"])
    outcome = {"gate_passed": str(passed).lower(), "gate_failed_checks": ",".join(gate["failed"]) or "none"}
    previous = None
    if passed:
        reason = f"gate passed ({len(gate['checks'])} checks), registered by run {run_id}"
        tracker.set_version_tags(cfg.model_name, version, {**outcome, "promoted_at": _now(),
                                                           "promotion_reason": reason})
        archive = {"archived_at": _now(), "archived_reason": f"replaced by version {version}: {reason}"}
        previous = tracker.promote(cfg.model_name, version, cfg.alias, cfg.previous_alias, archive)
        message = f"promoted to @{cfg.alias}" + (f"; version {previous} is now @{cfg.previous_alias}" if previous
                                                 else "")
    else:
        tracker.set_version_tags(cfg.model_name, version, {**outcome, "rejected": "true", "rejected_at": _now(),
                                                           "rejected_checks": ",".join(gate["failed"])})
        where = f"@{cfg.alias} stays on version {production['version']}" if production else f"no @{cfg.alias} yet"
        message = f"rejected (failed: {', '.join(gate['failed'])}); {where}"
    _publish_card(tracker, cfg.model_name, version, run_id, reports_dir, {
        "gate": gate, "metrics": metrics, "robustness": robustness, "lineage": version_tags,
        "members": list(spec["members"]), "fusion": str(spec.get("method", "")),
        "training": card.get("training", {}), "synthetic": bool(card.get("synthetic"))})
    res = RegisterResult(cfg.model_name, version, passed, cfg.alias, record_path, run_id, gate, passed, True,
                         previous, message)
    return _record(record_path, res, tracker, {**version_tags, **outcome})


def check_inputs(params: Params, layout: Layout) -> None:
    """Fail with one line, before an MLflow run is opened, when an upstream output is missing (no empty runs) or the
    export's packages are (`ensemble.export`)."""
    from tasks.preflight import check_export

    check_export(params)
    needed = [(layout.reports_dir / "metrics.json", "evaluate"), (layout.ensemble_dir / "ensemble.json", "ensemble"),
              (layout.faces_index, "faces"), (layout.ingest_report, "ingest")]
    for path, stage in needed:
        if not path.is_file():
            raise StageError(f"not found: {path}", f"run the {stage} stage first (`dfd stage {stage}`), or `dfd run`")


def run(params: Params, layout: Layout, tracker: Tracker, parent_id: str | None = None,
        flow_run_id: str | None = None, retrain_trigger: str | None = None) -> RegisterResult:
    """The stage as `dfd stage register` (its own run) and the flow (a run nested under `parent_id`) call it.

    Both paths tag the run and the version with the same lineage, computed by one function from the same files;
    the flow adds its Prefect flow run id, and `retrain_trigger` when drift forced a retraining on unchanged
    lineage (`monitor.retrain_on_drift`): the retrained ensemble is then registered and gated, not skipped.
    """
    check_inputs(params, layout)
    tags = run_lineage(params, layout.ingest_report, layout.root)
    # How the training data was split (the ingest report's scheme): a champion split otherwise is not compared.
    tags[SPLIT_SCHEME_TAG] = str(read_json(layout.ingest_report).get("split_scheme") or "identity-hash (before "
                                                                                        "persons-1)")
    if flow_run_id:
        tags["prefect_flow_run_id"] = str(flow_run_id)
    if retrain_trigger:
        tags["retrain_trigger"] = retrain_trigger
    with tracker.run("register" if parent_id else "register (dvc)", parent_id, tags) as rid:
        metrics_path = layout.reports_dir / "metrics.json"
        if metrics_path.is_file():
            tracker.log_metrics(rid, {"test": read_json(metrics_path)["ensemble"]})
        res = register(params.registry, params.evaluate.gate, layout.reports_dir, layout.ensemble_dir,
                       {m: layout.model_dir(m) for m in params.models}, layout.faces_index, tracker, rid, tags,
                       layout.registry_record, params.ensemble.aggregation,
                       {"training": training_summary(layout),
                        # the demo generator's marker in the data root: the model learnt from drawn faces
                        "synthetic": (layout.resolve(params.data.root) / DEMO_MARKER).is_file()},
                       params.monitor.reference_max_samples, params.ensemble.export, params.serve)
        tracker.log_metrics(rid, {"gate_passed": int(res.passed)})
        tracker.set_tags(rid, {"gate_passed": res.passed, "registered": res.registered, "outcome": res.message})
        if not res.registered:  # a new version logged gate.json with its card; this run still records its gate
            tracker.log_artifact(rid, layout.reports_dir / "gate.json")
        return res


def rollback(cfg: RegistryParams, tracker: Tracker, to: str | None = None, reason: str = "",
             who: str | None = None) -> tuple[str, str]:
    """Move `production` back to `to` (default: the `previous` alias); tag both versions with who, when and why.

    The version rolled back from loses nothing but the alias; `previous` is cleared (a second rollback must name
    its target with `to`), so that a repeated `dfd rollback` cannot bounce back to the version just withdrawn.

    Returns:
        (version rolled back from, version now in production).
    """
    who = who or _user()
    with tracker.promotion_lock(cfg.model_name):
        current = tracker.version_by_alias(cfg.model_name, cfg.alias)
        if current is None:
            raise DfdError(f"{cfg.model_name} has no @{cfg.alias} version: nothing to roll back",
                           "promote a version first (the register stage)")
        if to is None:
            prev = tracker.version_by_alias(cfg.model_name, cfg.previous_alias)
            if prev is None:
                raise DfdError(f"{cfg.model_name} has no @{cfg.previous_alias} version",
                               "name the target with `dfd rollback --to VERSION`")
            to = prev["version"]
        target = tracker.get_version(cfg.model_name, str(to))
        if target["version"] == current["version"]:
            raise DfdError(f"version {to} is already @{cfg.alias}")
        when, why = _now(), reason or "no reason given"
        tracker.set_alias(cfg.model_name, cfg.alias, target["version"])
        tracker.delete_alias(cfg.model_name, cfg.previous_alias)
        tracker.set_version_tags(cfg.model_name, current["version"], {
            "rolled_back_at": when, "rolled_back_by": who, "rollback_reason": why,
            "rolled_back_to": target["version"]})
        tracker.set_version_tags(cfg.model_name, target["version"], {
            "restored_at": when, "restored_by": who, "restore_reason": why, "restored_from": current["version"]})
    return current["version"], target["version"]


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"
