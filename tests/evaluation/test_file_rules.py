"""The served file rule is a rule the gate judged (`dfd.evaluation.file_rules`, docs/guides/explain.md): the evaluate
stage scores the test files under largest_face and worst_track with the functions serving calls, the gate fails a
served rule it could not judge, and the card and metrics.json say which rule was judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfd.data.demo_data import Pose, draw_face, make_identity, side_by_side, two_face_clip, write_video
from dfd.data.face_extract import extract_sample
from dfd.evaluation.file_rules import judge_rules, rule_scores
from dfd.evaluation.gate import decide
from dfd.evaluation.metrics import frame_and_video_metrics
from dfd.evaluation.model_card import CardInputs, model_card
from dfd.platform.config import AggregationParams, FacesParams, GateParams, ServeParams
from dfd.serving.tracks import judge
from tasks.ensemble import load_predictions
from tasks.evaluate import judge_served_rule

MEAN = AggregationParams(method="mean")
FRAMES = 6
# What the faces stage records with faces.all_faces (tasks/faces.py adds the tracker's gap, serve.track_max_gap).
ALL_FACES = {**FacesParams(frames_per_video=FRAMES, all_faces=True, crop_size=64, workers=1).model_dump(),
             "track_max_gap": 2}


def _two_real_faces(path: Path, seed: int) -> None:
    """A clip of two real people side by side, the second smaller (the shape of `two_face_clip`, no fake)."""
    rng = np.random.default_rng(100 + seed)
    a, b = make_identity(rng, "a"), make_identity(rng, "b")
    frames = [side_by_side([draw_face(a, Pose(dx=0.004 * i), 160, 2 * i), draw_face(b, Pose(), 128, 2 * i + 1)])[0]
              for i in range(FRAMES)]
    write_video(path, frames)


def _scored_crops(tmp_path: Path) -> pd.DataFrame:
    """The faces stage's rows (every face, tracked) of three fake clips (a blended face beside a larger real one)
    and three real ones, each crop scored as a detector that sees the blend would: 0.8 when the generator's paste
    mask covers over a quarter of its box (the blended face's box is about 60% mask), else 0.1, with seeded noise."""
    rng = np.random.default_rng(0)
    rows = []
    for label in (1, 0):
        for seed in range(3):
            sid = f"{'fake' if label else 'real'}{seed}"
            path = tmp_path / "raw" / f"{sid}.mp4"
            masks = two_face_clip(path, seed, frames=FRAMES) if label else None
            if not label:
                _two_real_faces(path, seed)
            found = extract_sample({"sample_id": sid, "path": path.name, "media": "video"}, str(path.parent),
                                   str(tmp_path / "faces"), ALL_FACES)
            for f in found["frames"]:
                x0, y0, x1, y1 = (max(0, round(v)) for v in f["box"])
                share = float(masks[f["frame"]][y0:y1, x0:x1].mean()) if masks else 0.0
                rows.append({"sample_id": sid, "frame": f["frame"], "track": f["track"], "box": f["box"],
                             "label": label, "media": "video",
                             "prob": float(np.clip((0.8 if share > 0.25 else 0.1) + rng.normal(0, 0.02), 0, 1))})
    return pd.DataFrame(rows)


def test_worst_track_calls_the_fake_face_beside_a_real_one_that_largest_face_misses(tmp_path: Path) -> None:
    """Demo clips with a fake face beside a larger real one, through the faces stage's tracker and the evaluate
    stage's scoring: worst_track calls every fake clip fake, largest_face (every face pooled, as a model trained
    with faces.all_faces is scored) averages the fake face away; both call the real clips real. The served rule's
    video metrics become the ensemble's, which the gate's video checks read."""
    crops = _scored_crops(tmp_path)
    per_file = crops.groupby("sample_id")["track"].nunique()
    assert (per_file == 2).all()  # the faces stage tracked the two people of each clip, missed detections bridged
    threshold = 0.5
    ensemble = frame_and_video_metrics(crops, threshold, "prob", MEAN)
    rules = judge_served_rule(ensemble, crops, ServeParams(file_rule="worst_track"), threshold, MEAN, None, ALL_FACES)

    worst, _ = rule_scores(crops, "worst_track", MEAN, 3, FRAMES)
    largest, _ = rule_scores(crops, "largest_face", MEAN, 3, FRAMES)
    fakes = [f"fake{s}" for s in range(3)]
    called = {name: dict(zip(v["sample_id"], v["prob"] >= threshold, strict=True))
              for name, v in (("worst_track", worst), ("largest_face", largest))}
    assert all(called["worst_track"][s] for s in fakes) and not any(called["largest_face"][s] for s in fakes)
    assert not any(v for s, v in called["worst_track"].items() if s.startswith("real"))
    assert rules["judged"] and rules["served"] == "worst_track" and rules["reason"] is None
    got = rules["rules"]
    assert got["worst_track"]["video_accuracy"] == 1.0 and got["largest_face"]["video_accuracy"] < 1.0
    assert got["largest_face"]["video_accuracy"] == pytest.approx(float(
        ((largest["prob"] >= threshold) == largest["label"]).mean()))
    assert ensemble["video_accuracy"] == got["worst_track"]["video_accuracy"]  # the gate reads the served rule
    # largest_face is what evaluation always scored: the same numbers as the frames-to-videos metrics.
    before = frame_and_video_metrics(crops, threshold, "prob", MEAN)
    assert got["largest_face"]["video_auc"] == before["video_auc"]
    assert got["largest_face"]["video_eer"] == before["video_eer"]

    # Serving judges each file with the same rule on the same tracks: the same P(fake).
    for sid, group in crops.groupby("sample_id"):
        found = [{"frame": r.frame, "track": r.track, "box": r.box, "p_fake": r.prob} for r in group.itertuples()]
        verdict = judge(found, list(range(FRAMES)), True, "worst_track", MEAN, ServeParams(), ALL_FACES)
        assert verdict.p_fake == pytest.approx(float(worst.loc[worst["sample_id"] == sid, "prob"].iloc[0]))


def test_tracks_shorter_than_min_frames_are_left_out_as_serving_leaves_them() -> None:
    """A real file's two-frame fake-looking bystander does not count at serve.min_frames 3 (it does at 2); a file
    whose every track is too short has no score (not applicable), and is counted as such."""
    rows = [("real", t, f, 0, p) for t, frames, p in ((0, range(6), 0.1), (1, (2, 3), 0.95)) for f in frames]
    rows += [("fake", 0, f, 1, 0.9) for f in range(6)] + [("short", t, t * 3, 1, 0.9) for t in range(2)]
    crops = pd.DataFrame(rows, columns=["sample_id", "track", "frame", "label", "prob"])
    vids, abstained = rule_scores(crops, "worst_track", MEAN, 3, FRAMES)
    assert dict(zip(vids["sample_id"], vids["prob"], strict=True)) == pytest.approx({"real": 0.1, "fake": 0.9})
    assert abstained == ["short"]
    loose, _ = rule_scores(crops, "worst_track", MEAN, 2, FRAMES)
    assert dict(zip(loose["sample_id"], loose["prob"], strict=True))["real"] == pytest.approx(0.95)
    # Capped at faces.frames_per_video, as serving caps it: a model sampling 2 frames a clip needs 2.
    capped, none = rule_scores(crops, "worst_track", MEAN, 3, 2)
    assert "real" in set(capped["sample_id"]) and none == ["short"]
    metrics = judge_rules(crops, "worst_track", 0.5, MEAN, 3, 2, ALL_FACES)["rules"]["worst_track"]
    assert metrics["files"] == 2 and metrics["not_applicable"] == 1 and metrics["not_applicable_files"] == ["short"]


# --- the gate and the card --------------------------------------------------------------------------------------

GOOD = {"ensemble": {"auc": 0.97, "video_auc": 0.98, "eer": 0.05, "accuracy": 0.93, "video_ece": 0.03},
        "threshold": 0.5}
CFG = GateParams(min_auc=0.9, min_video_auc=0.9, max_eer=0.15, min_accuracy=0.8, max_ece=0.1,
                 max_auc_drop={}, max_auc_drop_default=None, max_drift_share=None)


def _crops() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 20)
    return pd.DataFrame({"sample_id": np.repeat([f"s{i}" for i in range(40)], 4), "label": np.repeat(labels, 4),
                         "track": 0, "prob": np.clip(np.repeat(labels, 4) * 0.6 + rng.uniform(0.05, 0.35, 160), 0, 1)})


def test_the_gate_fails_a_served_worst_track_that_was_not_judged_and_says_why() -> None:
    """serve.file_rule worst_track with faces extracted as the largest face only: a failing served_rule row naming
    faces.all_faces; the same metrics pass under largest_face; a metrics.json judged for another rule fails too."""
    largest_only = {**ALL_FACES, "all_faces": False}
    for served in ("worst_track", "largest_face"):
        metrics = {**GOOD, "file_rules": judge_rules(_crops(), served, 0.5, MEAN, 3, 2, largest_only)}
        gate = decide(CFG, metrics, None, None, file_rule=served)
        row = next(c for c in gate["checks"] if c["name"] == "served_rule")
        if served == "worst_track":
            assert not gate["passed"] and gate["failed"] == ["served_rule"]
            assert "not judged" in row["detail"] and "faces.all_faces" in row["detail"]
            assert "faces.all_faces" in metrics["file_rules"]["rules"]["worst_track"]["reason"]
        else:
            assert gate["passed"] and row["passed"] and "largest_face judged" in row["detail"]
    stale = {**GOOD, "file_rules": judge_rules(_crops(), "largest_face", 0.5, MEAN, 3, 2, ALL_FACES)}
    row = decide(CFG, stale, None, None, file_rule="worst_track")["checks"][0]
    assert not row["passed"] and "judged largest_face" in row["detail"]
    gap = {**ALL_FACES, "track_max_gap": 5}  # the faces stage tracked otherwise than serving will
    moved = {**GOOD, "file_rules": judge_rules(_crops(), "worst_track", 0.5, MEAN, 3, 2, gap)}
    assert "serve.track_max_gap is 2" in decide(CFG, moved, None, None, file_rule="worst_track")["checks"][0]["detail"]
    old = decide(CFG, GOOD, None, None, file_rule="worst_track")  # a metrics.json written before file rules
    assert old["failed"] == ["served_rule"]


def test_the_card_says_which_rule_was_judged() -> None:
    for served, all_faces, says in (("worst_track", True, "worst_track, judged"),
                                    ("worst_track", False, "worst_track, NOT judged"),
                                    ("largest_face", False, "largest_face, judged")):
        rules = judge_rules(_crops(), served, 0.5, MEAN, 3, 2, {**ALL_FACES, "all_faces": all_faces})
        metrics = {**GOOD, "file_rules": rules}
        gate = decide(CFG, metrics, None, None, file_rule=served)
        card, description = model_card(CardInputs(model_name="m", version="1", run_id="r", gate=gate,
                                                  metrics=metrics))
        assert f"Served rule (`serve.file_rule`): {says}" in card and says in description
        table = [line for line in card.splitlines() if line.startswith("| worst_track |")]
        assert len(table) == 1 and (("not scored" in table[0]) != all_faces)


def test_predictions_of_several_faces_a_frame_are_fused_face_by_face(tmp_path: Path) -> None:
    """With faces.all_faces a frame has a crop per face: members' predictions are joined on the track too, never
    crossed (two faces, two members: two rows, not four)."""
    paths = {}
    for m, shift in (("a", 0.0), ("b", 0.1)):
        df = pd.DataFrame({"sample_id": "v", "frame": 0, "track": [0, 1], "split": "test", "label": 1,
                           "prob": [0.2 + shift, 0.8 + shift]})
        paths[m] = tmp_path / f"{m}.parquet"
        df.to_parquet(paths[m])
    wide, dropped = load_predictions(paths)
    assert len(wide) == 2 and dropped == 0
    np.testing.assert_allclose(wide.sort_values("track")[["a", "b"]].to_numpy(), [[0.2, 0.3], [0.8, 0.9]])


def test_the_trained_project_judged_largest_face_and_says_why_not_worst_track(trained_project: Path) -> None:
    """The session's project extracts the largest face (faces.all_faces false) and serves the default rule: its
    metrics.json records largest_face judged, with the ensemble's video numbers, and worst_track not scored."""
    rules = json.loads((trained_project / "artifacts" / "reports" / "metrics.json").read_text())
    fr, ens = rules["file_rules"], rules["ensemble"]
    assert fr["served"] == "largest_face" and fr["judged"] and fr["reason"] is None
    assert fr["rules"]["largest_face"]["video_auc"] == pytest.approx(ens["video_auc"], nan_ok=True)
    assert "faces.all_faces" in fr["rules"]["worst_track"]["reason"]


def test_image_rows_need_one_frame() -> None:
    """An image is a one-frame file: its faces are one-frame tracks and count (serving's min_frames_for)."""
    crops = pd.DataFrame({"sample_id": ["img", "img"], "track": [0, 1], "frame": [0, 0], "label": [1, 1],
                          "media": ["image", "image"], "prob": [0.2, 0.7]})
    vids, abstained = rule_scores(crops, "worst_track", MEAN, 3, FRAMES)
    assert abstained == [] and vids["prob"].tolist() == pytest.approx([0.7])

