"""evaluate: test metrics of the ensemble and its members, cross-dataset, robustness, attacks and drift (the register
stage gates on them)."""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from dfd.evaluation.adversarial import adversarial_report
from dfd.evaluation.agreement import agreement_summary
from dfd.evaluation.calibration import apply_post_calibration
from dfd.evaluation.crops import iter_crop_batches
from dfd.evaluation.cross_dataset import cross_dataset_table, dataset_row, table_plot
from dfd.evaluation.drift import (
    drift_report,
    embedding_columns,
    image_stats,
    per_sample,
    quality_report,
    whole_samples,
)
from dfd.evaluation.file_rules import judge_rules, rule_scores
from dfd.evaluation.robustness import check_robustness, robustness_plot, robustness_report
from dfd.evaluation.scorecard import test_scorecard, video_intervals
from dfd.platform.config import AggregationParams, EvaluateParams, Params, ServeParams
from dfd.platform.errors import StageError
from dfd.platform.files import read_json, write_json
from dfd.platform.layout import Layout
from dfd.serving.ensemble import EnsemblePredictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """What the evaluate stage wrote (the register stage decides the gate on it: dfd/evaluation/gate.py)."""

    reports_dir: Path
    metrics: dict[str, Any]


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _sample(frames: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """At most `n` rows, drawn reproducibly (all of them when there are fewer)."""
    return frames.sample(n, random_state=seed) if len(frames) > n else frames


def _batches(frames: pd.DataFrame, crops_root: Path, batch_size: int, desc: str) -> Any:
    """Crop batches behind a progress bar: robustness scores every member on every level, minutes on a CPU."""
    batches = iter_crop_batches([crops_root / c for c in frames["crop"]], frames["label"].tolist(), batch_size)
    return tqdm(batches, total=math.ceil(len(frames) / batch_size), desc=desc, unit="batch", leave=False)


def robustness(cfg: EvaluateParams, spec: dict[str, Any], checkpoints: dict[str, Path], predictor: Any,
               test_frames: pd.DataFrame, crops_root: Path, threshold: float, device: str) -> dict[str, Any]:
    """Perturbation levels and white-box attacks on a sample of test crops (interfaces.md C), streamed in batches."""
    out: dict[str, Any] = {}
    sample = _sample(test_frames, cfg.robustness_max_crops)
    if any(cfg.robustness.values()):
        out = robustness_report(_batches(sample, crops_root, cfg.batch_size, "robustness"), predictor, cfg.robustness,
                                threshold)
    adv = cfg.adversarial
    if adv.attacks and adv.epsilons:
        from dfd.serving.differentiable import DifferentiableEnsemble

        forward = DifferentiableEnsemble(spec, checkpoints, device)
        post = spec.get("post_calibration")  # metrics on the served scale, judged at the evaluated threshold
        report = adversarial_report(_batches(sample.head(adv.max_crops), crops_root, cfg.batch_size, "attacks"),
                                    forward.fused_logit, adv.attacks, adv.epsilons, adv.pgd_steps,
                                    adv.pgd_step_ratio, threshold, device,
                                    calibrate=lambda p: apply_post_calibration(post, p), loss=adv.loss)
        out["adversarial_clean"] = report.pop("clean")  # the differentiable path's own clean metrics
        out["adversarial"] = report
    return out


def _drift_features(frames: pd.DataFrame, crops_root: Path, embed: Any, batch_size: int
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per sample (a video's crops averaged, an image's one crop): its image statistics and embedding."""
    stats, embs = [], []
    for crops, _ in _batches(frames, crops_root, batch_size, "drift features"):
        stats.append(image_stats(crops))
        embs.append(embed(crops))
    return per_sample(pd.concat(stats, ignore_index=True), np.concatenate(embs), frames["sample_id"].to_numpy())


def drift(cfg: EvaluateParams, spec: dict[str, Any], checkpoints: dict[str, Path], train_frames: pd.DataFrame,
          crops_root: Path, sets: dict[str, tuple[pd.DataFrame, Path]], val: pd.DataFrame, threshold: float,
          out_dir: Path, device: str) -> dict[str, Any]:
    """Evidently reports: training samples against each evaluation set's, and the classification quality of each.

    One row per sample (video or image), as monitoring compares served files: the frames of a video are no
    independent draws, and counted as such they flagged identity-disjoint splits of one dataset as drifted
    (`dfd.evaluation.drift.per_sample`).

    Args:
        sets: Evaluation set name to its scored frames (`crop`, `label`, `prob`) and crops root; the first is the
            training set's test split.
        val: Validation frames (`label`, `prob`): the reference of the test split's quality report (a further
            dataset's quality is compared with the test split's).
        out_dir: Where `drift_<set>.html` and `quality_<set>.html` go.
    """
    from dfd.serving.differentiable import penultimate_embedder

    member = cfg.drift_member or max(spec["weights"], key=spec["weights"].get)
    if member not in checkpoints:
        raise StageError(f"evaluate.drift_member '{member}' is not an ensemble member",
                         f"choose from {', '.join(sorted(checkpoints))}")
    embed = penultimate_embedder(checkpoints[member], device)
    ref_stats, ref_emb = _drift_features(whole_samples(train_frames, cfg.drift_max_crops), crops_root, embed,
                                         cfg.batch_size)
    cur = {name: _drift_features(whole_samples(frames, cfg.drift_max_crops), root, embed, cfg.batch_size)
           for name, (frames, root) in sets.items()}
    ref_e, cur_e = embedding_columns(ref_emb, {n: e for n, (_, e) in cur.items()}, cfg.drift_embedding_dims)
    reference = pd.concat([ref_stats, ref_e], axis=1)
    first = next(iter(sets))
    out: dict[str, Any] = {"reference": "train split", "embedding_member": member, "rows": "one per sample",
                           "datasets": {}}
    for name, (stats, _) in cur.items():
        current = pd.concat([stats, cur_e[name]], axis=1)
        summary = drift_report(reference, current, out_dir / f"drift_{name}.html")
        quality_ref = val if name == first else sets[first][0]
        summary["quality"] = quality_report(sets[name][0], quality_ref, threshold, out_dir / f"quality_{name}.html")
        out["datasets"][name] = summary
    out["drifted_share"] = out["datasets"][first]["drifted_share"]
    return out


def score_dataset(predictor: Any, index_path: Path, splits: list[str] | None, batch_size: int) -> pd.DataFrame:
    """The ensemble's P(fake) for every crop of an evaluation dataset's faces index (the chosen splits)."""
    index = pd.read_parquet(index_path)
    frames = index[index["split"].isin(splits)] if splits else index
    if frames.empty or frames["label"].nunique() < 2:
        raise StageError(f"evaluation dataset {index_path.parent.parent.name}: no crops of both classes"
                         f"{f' in splits {splits}' if splits else ''}", "check its ingest and faces reports")
    probs, members = [], []
    for crops, _ in _batches(frames, index_path.parent, batch_size, "scoring"):
        scores = predictor.member_scores(crops)  # each member's own score too: the table's member_auc
        members.append(scores)
        probs.append(predictor.combine(scores))
    per_member = {m: np.concatenate([b[m] for b in members]) for m in members[0]} if members else {}
    return frames.reset_index(drop=True).assign(prob=np.concatenate(probs), **per_member)


def _test_fakes(cfg: EvaluateParams, faces_index: Path, test: pd.DataFrame) -> str:
    """`real` when the test split holds real fakes, else `sbi` (made by real-only members), or a one-line error when
    nothing would judge the gate on real fakes: never a gate judged on SBI fakes alone unless asked for."""
    if not faces_index.is_file():
        return "real"  # the faces index is checked where it is read
    index = pd.read_parquet(faces_index, columns=["split", "label"])
    if ((index["split"] == "test") & (index["label"] == 1)).any():
        return "real"
    if cfg.datasets or (cfg.allow_synthetic_test and (test["label"] == 1).any()):
        return "sbi"
    raise StageError("no real fake to judge the ensemble on: the test split has none and evaluate.datasets is empty",
                     "add fake samples to the dataset or an evaluate.datasets entry with fakes; "
                     "evaluate.allow_synthetic_test: true judges on SBI fakes (the model version says so)")


def evaluate(cfg: EvaluateParams, ensemble_dir: Path, model_dirs: dict[str, Path], faces_index: Path,
             out_dir: Path, eval_sets: dict[str, Path] | None = None, train_name: str = "train",
             serve: ServeParams | None = None) -> EvaluateResult:
    """Score the ensemble and each member on the test split (and further datasets), and write reports and plots.

    Args:
        cfg: Evaluation params.
        ensemble_dir: Holds ensemble.json and predictions.parquet.
        model_dirs: Each member's folder (best.pt).
        faces_index: The faces index (for crops, robustness and drift).
        out_dir: artifacts/reports.
        eval_sets: Further datasets (cross-dataset evaluation), name to faces index (tasks/eval_datasets.py).
        train_name: The training dataset's name: its test split's row in the cross-dataset table.
        serve: `serve:` params: the file rule served (`file_rule`) is judged on the test files, with
            `min_frames` and `track_max_gap` as serving applies them (default: their defaults).
    """
    check_robustness(cfg.robustness)
    spec_path, pred_path = ensemble_dir / "ensemble.json", ensemble_dir / "predictions.parquet"
    for p in (spec_path, pred_path):
        if not p.is_file():
            raise StageError(f"ensemble output not found: {p}", "run `dfd stage ensemble` first")
    spec = read_json(spec_path)
    preds = pd.read_parquet(pred_path)
    test = preds[preds["split"] == "test"]
    test_fakes = _test_fakes(cfg, faces_index, test)
    if test.empty or test["label"].nunique() < 2:
        raise StageError("the test split is empty or holds one class only", "add identities or raise ingest.test_share")
    threshold = spec["val_eer_threshold"] if cfg.threshold == "val_eer" else cfg.fixed_threshold
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["sample_id", "dataset", "method"]  # per-dataset and per-method rows of the scorecard
    samples = None
    if faces_index.is_file():  # + persons/identity, when the index has them: the clusters of the intervals
        import pyarrow.parquet as pq

        names = set(pq.read_schema(faces_index).names)
        samples = pd.read_parquet(faces_index, columns=[c for c in [*cols, "identity", "persons"] if c in names])
    plots = out_dir / "plots"
    card = test_scorecard(preds, spec, threshold, samples, plots)
    ensemble_metrics, members = card.pop("ensemble"), card.pop("members")
    bad_crops = sorted({b["path"] for d in model_dirs.values() if (d / "metrics.json").is_file()
                        for b in read_json(d / "metrics.json").get("bad_crops", [])})

    index = pd.read_parquet(faces_index)
    crops_root = faces_index.parent
    extra = [c for c in ("crop", "method", "media", "track") if c not in test.columns and c in index]
    on = [c for c in ("sample_id", "frame", "track") if c in test.columns and c in index]  # one crop per face
    test_frames = test.merge(index[[*on, *extra]], on=on, how="left")
    checkpoints = {m: d / "best.pt" for m, d in model_dirs.items()}
    # Reports of datasets no longer listed, or of a run with the reports off, must not linger.
    shutil.rmtree(out_dir / "evidently", ignore_errors=True)
    (out_dir / "evidently").mkdir(parents=True)
    device = _device(cfg.device)
    predictor = EnsemblePredictor.from_spec(spec, checkpoints, device)
    # SBI-made test fakes exist only in memory (the crops on disk are the reals): perturbing those crops under the
    # fake labels would measure nothing true, so robustness and attacks are not measured (the gate says so).
    robust = (robustness(cfg, spec, checkpoints, predictor, test_frames, crops_root, threshold, device)
              if test_fakes == "real" else {"skipped": "the test fakes are SBI-made: not on disk to perturb"})
    write_json(out_dir / "robustness.json", robust)
    if robust.get("perturbed"):
        robustness_plot(robust, plots / "robustness.png")
    else:
        (plots / "robustness.png").unlink(missing_ok=True)  # an earlier run's curves are not this run's

    sets: dict[str, tuple[pd.DataFrame, Path]] = {train_name: (test_frames, crops_root)}
    for name, path in (eval_sets or {}).items():
        spec_ds = next((d for d in cfg.datasets if d.name == name), None)
        sets[name] = (score_dataset(predictor, path, spec_ds.splits if spec_ds else None, cfg.batch_size),
                      path.parent)
    aggregation = AggregationParams(**spec["aggregation"]) if spec.get("aggregation") else None
    rows = {name: dataset_row(frames, threshold, "test split" if name == train_name else "cross-dataset", aggregation,
                              list(spec["members"]))
            for name, (frames, _) in sets.items()}
    table = cross_dataset_table(rows)
    # Rows as a list: the training set's test split first, then `evaluate.datasets` in their order.
    write_json(out_dir / "cross_dataset.json", {"threshold": threshold, "columns": list(table.columns),
                                                "rows": [{"dataset": n, **r} for n, r in rows.items()]})
    table_plot(table, plots / "cross_dataset.png")

    drift_summary: dict[str, Any] = {}
    if cfg.drift_report:
        val = preds[preds["split"] == "val"]
        drift_summary = drift(cfg, spec, checkpoints, index[index["split"] == "train"], crops_root, sets, val,
                              threshold, out_dir / "evidently", device)

    metrics = {"ensemble": ensemble_metrics, "members": members, "threshold": threshold, **card,
               "bad_crops": bad_crops,  # unreadable val/test crops the members excluded (not scored)
               "robustness": {name: {lv: m["auc"] for lv, m in levels.items()}
                              for name, levels in robust.get("perturbed", {}).items()},
               "adversarial": {a: {e: m["auc"] for e, m in eps.items()} for a, eps in robust.get("adversarial",
                                                                                               {}).items()},
               "cross_dataset": {name: {k: row[k] for k in ("auc", "eer", "video_auc") if k in row}
                                 for name, row in rows.items()},
               "drift": drift_summary, "test_fakes": test_fakes}
    if test_fakes != "real" and len(rows) > 1:
        # The gate judges real fakes: the first further dataset's, not the test split's SBI-made ones.
        judge = next(n for n in rows if n != train_name)
        metrics["ensemble_test_split"], metrics["ensemble"] = ensemble_metrics, {
            k: v for k, v in rows[judge].items() if isinstance(v, int | float)}
        metrics["gate_judged_on"] = f"evaluate.datasets '{judge}' (the test split has no real fake)"
    elif test_fakes != "real":
        metrics["gate_judged_on"] = "SBI-made fakes of the test split (evaluate.allow_synthetic_test: true)"
    # Member agreement on the files the gate judges (the test split, or the further dataset standing in for it).
    judged = train_name if test_fakes == "real" or len(rows) == 1 else next(n for n in rows if n != train_name)
    metrics["agreement"] = {"dataset": judged, **agreement_summary(sets[judged][0], spec, threshold)}
    faces_report = (faces_index if judged == train_name else (eval_sets or {})[judged]).parent / "faces_report.json"
    metrics["file_rules"] = judge_served_rule(metrics["ensemble"], sets[judged][0], serve or ServeParams(),
                                              threshold, aggregation or AggregationParams(), samples,
                                              read_json(faces_report).get("params") if faces_report.is_file()
                                              else None)
    metrics["file_rules"]["dataset"] = judged
    write_json(out_dir / "metrics.json", metrics)
    return EvaluateResult(out_dir, metrics)


def judge_served_rule(ensemble: dict[str, Any], frames: pd.DataFrame, serve: ServeParams, threshold: float,
                      agg: AggregationParams, samples: pd.DataFrame | None,
                      faces_params: dict[str, Any] | None) -> dict[str, Any]:
    """Score the judged set's files under both file rules (`dfd.evaluation.file_rules.judge_rules`); when the served
    rule is `worst_track` and could be judged, the ensemble's video metrics (what the gate's video checks read)
    become that rule's, in place, with their intervals."""
    rules = judge_rules(frames, serve.file_rule, threshold, agg, serve.min_frames, serve.track_max_gap, faces_params)
    if rules["served"] == "worst_track" and rules["judged"]:
        ensemble.update({k: v for k, v in rules["rules"]["worst_track"].items() if k.startswith("video_")})
        fpv = int((faces_params or {}).get("frames_per_video", serve.min_frames))
        vids, _ = rule_scores(frames, "worst_track", agg, serve.min_frames, fpv)
        if "video_ece_ci_low" in ensemble:  # the test split's intervals, redrawn for the served rule's scores
            ensemble.update(video_intervals(vids, samples))
    return rules


def run(params: Params, layout: Layout) -> EvaluateResult:
    """The stage as `dfd stage evaluate` and the flow call it: further datasets are prepared first."""
    from tasks.eval_datasets import prepare_all

    check_robustness(params.evaluate.robustness)  # before minutes of ingest and faces on further datasets
    return evaluate(params.evaluate, layout.ensemble_dir, {m: layout.model_dir(m) for m in params.models},
                    layout.faces_index, layout.reports_dir, prepare_all(params, layout), params.data.name,
                    params.serve)
