"""Member agreement in served answers: the registered model's members vote on each file; a file they disagree on is
`uncertain` with its P(fake) kept, in the pyfunc, `dfd predict` and the traffic records."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfd.evaluation.calibration import calibrate
from dfd.monitoring.checks import weekly_series
from dfd.monitoring.store import LocalStore
from dfd.monitoring.traffic import TrafficLog, read_records
from dfd.platform.config import MonitorParams
from dfd.serving.predict import run_predict


def _votes(model, path: Path) -> tuple[dict[str, bool], dict[str, float], float]:
    """Each counted member's label for `path` (fake?) and its signed share of the fusion, computed apart from the
    scorer, and the ensemble's P(fake)."""
    from dfd.data.face_extract import face_crops
    from dfd.data.media import sample_video_frames

    frames = sample_video_frames(path, model.faces_cfg["frames_per_video"])[0]
    crops = np.stack([f["crop"] for f in face_crops(frames, model.faces_cfg)])
    raw = model.predictor.member_scores(crops)
    weights = model.spec["weights"]
    counted = [m for m in model.spec["fusion"]["members"] if abs(weights[m]) > 1e-9]
    votes = {m: float(np.mean(calibrate(raw[m], model.spec["calibration"][m]))) >= 0.5 for m in counted}
    total = sum(abs(weights[m]) for m in counted)
    return votes, {m: weights[m] / total for m in counted}, float(np.mean(model.predictor(crops)))


def _agreeing_share(votes: dict[str, bool], shares: dict[str, float], fake: bool) -> float:
    """The share of the fusion's weight behind `fake`: a negative share backs the opposite of its member's label."""
    return sum(abs(shares[m]) for m, v in votes.items() if v == (fake == (shares[m] > 0)))


def test_agreement_is_the_weighted_share_of_members_voting_with_the_ensemble(loaded, media: dict[str, Path]) -> None:
    model = loaded.python_model
    scorer = copy.copy(model.scorer)
    scorer.aggregation = scorer.aggregation.model_copy(update={"method": "mean"})
    votes, shares, p_fake = _votes(model, media["fake"])
    res = scorer.score_path(media["fake"])
    assert res.p_fake == pytest.approx(p_fake, abs=1e-6) and votes
    fake = res.label == "fake"
    assert res.agreement == pytest.approx(_agreeing_share(votes, shares, fake))
    # The ensemble's label set against the members' weighted majority: agreement <= 1/2, below the design's 0.8.
    majority_fake = _agreeing_share(votes, shares, True) >= 0.5
    scorer.threshold = 1.01 if majority_fake else 0.0  # every file "real" / every file "fake"
    scorer.agreement_threshold = 0.8
    against = scorer.score_path(media["fake"])
    assert against.agreement == pytest.approx(_agreeing_share(votes, shares, not majority_fake))
    assert against.agreement <= 0.5
    assert against.status == "uncertain" and against.reason == "members_disagree"
    assert against.p_fake == pytest.approx(res.p_fake, abs=1e-9)  # still scored: uncertain keeps its P(fake)
    assert "of the fusion's weight agree" in against.detail and "0.8" in against.detail
    backs = {m: v == ((against.label == "fake") == (shares[m] > 0)) for m, v in votes.items()}
    dissent = [m for m, agrees in backs.items() if not agrees]
    assert against.detail.endswith(f"disagreeing: {', '.join(dissent)}")
    scorer.agreement_threshold = 0.0
    assert scorer.score_path(media["fake"]).status == "scored"


def test_predict_lists_uncertain_files_as_scored_and_the_log_records_them(loaded, media: dict[str, Path],
                                                                          tmp_path: Path, capsys) -> None:
    scorer = copy.copy(loaded.python_model.scorer)
    scorer.threshold, scorer.agreement_threshold = 0.0, 1.0  # every file "fake": uncertain unless all members say so
    results = []
    out = tmp_path / "out.json"
    code = run_predict(scorer, [str(media["face"]), str(media["real"]), str(media["fake"]), str(media["noface"])],
                       "models:/m/1", out, progress=False, on_result=results.append)
    rows = {Path(r["path"]).stem: r for r in json.loads(out.read_text())}
    assert code == 1  # the no-face image is not scored; uncertain files are
    assert rows["noface"]["status"] == "not_applicable" and rows["noface"]["agreement"] is None
    scored = [r for k, r in rows.items() if k != "noface"]
    assert all(r["p_fake"] is not None and r["status"] in ("scored", "uncertain") for r in scored)
    assert all((r["status"] == "uncertain") == (r["agreement"] < 1.0) for r in scored)
    n_uncertain = sum(r["status"] == "uncertain" for r in scored)
    said = capsys.readouterr().out
    assert f"4 files: 3 scored (3 fake, 0 real; {n_uncertain} uncertain), 1 not scored" in said
    # The traffic log keeps each file's status and agreement; the weekly numbers count the uncertain share.
    with TrafficLog(LocalStore(tmp_path / "log"), MonitorParams(flush_interval_s=0.2), "predict") as log:
        for res in results:
            log.record(res, "1")
    df = read_records(LocalStore(tmp_path / "log"), datetime.now(UTC) - timedelta(hours=1))
    assert sorted(df["status"]) == sorted(r["status"] for r in rows.values())
    week = weekly_series(df, pd.DataFrame({"p_fake": np.linspace(0, 1, 50)}), MonitorParams(min_records=5)).iloc[0]
    assert week["scored"] == 3 and week["uncertain_rate"] == pytest.approx(n_uncertain / 3)


def test_evaluate_reports_the_agreement_of_the_test_files(registered) -> None:
    """metrics.json's agreement, recomputed here from predictions.parquet with plain numpy (mean aggregation)."""
    from dfd.platform.files import read_json

    reports, ensemble = registered.root / "artifacts" / "reports", registered.root / "artifacts" / "ensemble"
    agreement = read_json(reports / "metrics.json")["agreement"]
    spec = read_json(ensemble / "ensemble.json")
    test = pd.read_parquet(ensemble / "predictions.parquet").query("split == 'test'")
    threshold = read_json(reports / "metrics.json")["threshold"]
    counted = [m for m in spec["fusion"]["members"] if abs(spec["weights"][m]) > 1e-9]
    shares = []
    for _, g in test.groupby("sample_id"):
        fake = g["prob"].mean() >= threshold
        votes = [calibrate(g[m].to_numpy(), spec["calibration"][m]).mean() >= 0.5 for m in counted]
        shares.append(np.mean([v == fake for v in votes]))
    assert agreement["dataset"] == registered.params.data.name
    assert agreement["files"] == len(shares) and agreement["members"] == counted
    assert agreement["mean_agreement"] == pytest.approx(np.mean(shares))
    bound = spec["agreement_threshold"]
    assert agreement["threshold"] == bound and agreement["uncertain"] == sum(s < bound for s in shares)
