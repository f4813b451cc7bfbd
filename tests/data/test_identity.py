"""People as data: each adapter's persons give the identity clusters a dataset really has (DFDC, FF++, Celeb-DF,
names with underscores), and the split keeps every cluster whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dfd.data.adapters import get_adapter
from dfd.data.identity import cluster_names, person_components
from dfd.data.manifest import assign_splits
from dfd.platform.config import DataParams


def _touch(root: Path, *rels: str) -> None:
    """Empty files: the adapters list the layout, they do not read the media (ingest's validation does)."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


def _clusters(root: Path, adapter: str) -> tuple[int, dict[str, int]]:
    rows = [c for c in get_adapter(adapter)(root, DataParams(adapter=adapter)) if c.problem is None]
    comp = person_components([c.persons for c in rows])
    return len(set(comp)), {c.rel_path.rsplit("/", 1)[-1]: int(k) for c, k in zip(rows, comp, strict=True)}


def test_dfdc_clusters_are_originals_with_their_fakes_across_parts(tmp_path: Path) -> None:
    meta: dict[str, dict[str, dict[str, str]]] = {"dfdc_train_part_0": {}, "dfdc_train_part_1": {}}
    for i in range(12):  # 12 originals with 0-3 fakes each; originals' names are DFDC-like random stems
        part = f"dfdc_train_part_{i % 2}"
        meta[part][f"orig{i:02d}abcd.mp4"] = {"label": "REAL", "split": "train"}
        for k in range(i % 4):
            meta[part][f"fake{i:02d}{k}xyz.mp4"] = {"label": "FAKE", "split": "train",
                                                    "original": f"orig{i:02d}abcd.mp4"}
    # A fake filed in another part than its original still joins it.
    meta["dfdc_train_part_1"]["stray0000.mp4"] = {"label": "FAKE", "split": "train", "original": "orig00abcd.mp4"}
    for part, m in meta.items():
        _touch(tmp_path, *(f"{part}/{name}" for name in m))
        (tmp_path / part / "metadata.json").write_text(json.dumps(m))
    n, of = _clusters(tmp_path, "dfdc")
    assert n == 12  # the old parser split `dfdc_train_part_0/...` on "_": every sample shared "dfdc": 1 cluster
    assert of["stray0000.mp4"] == of["orig00abcd.mp4"] != of["orig02abcd.mp4"]
    assert of["fake031xyz.mp4"] == of["orig03abcd.mp4"]


def test_ffpp_fakes_join_their_target_and_source(tmp_path: Path) -> None:
    ids = [f"{i:03d}" for i in range(8)]
    _touch(tmp_path, *(f"original_sequences/youtube/c23/videos/{i}.mp4" for i in ids))
    pairs = [("000", "003"), ("003", "000"), ("001", "004"), ("002", "005")]  # FF++ swaps both ways
    for method in ("Deepfakes", "FaceSwap"):
        _touch(tmp_path, *(f"manipulated_sequences/{method}/c23/videos/{t}_{s}.mp4" for t, s in pairs))
    n, of = _clusters(tmp_path, "ffpp")
    assert n == 5  # {000, 003}, {001, 004}, {002, 005}, {006}, {007}
    assert of["000.mp4"] == of["003.mp4"] == of["003_000.mp4"] and of["001.mp4"] != of["000.mp4"]


def test_celebdf_swaps_join_both_celebrities_and_youtube_videos_stand_alone(tmp_path: Path) -> None:
    _touch(tmp_path, *(f"Celeb-real/id{i}_000{k}.mp4" for i in range(6) for k in range(2)),
           "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id1_id2_0001.mp4", "Celeb-synthesis/id4_id5_0000.mp4",
           "YouTube-real/00000.mp4", "YouTube-real/00001.mp4")
    n, of = _clusters(tmp_path, "celebdf")
    assert n == 5  # {id0, id1, id2} chained by two swaps, {id3}, {id4, id5}, and each YouTube video
    assert of["id0_0000.mp4"] == of["id2_0001.mp4"] == of["id1_id2_0001.mp4"] != of["id3_0000.mp4"]


def test_names_with_underscores_are_never_split(tmp_path: Path) -> None:
    meta = {}
    for i in range(40):  # `subject_01` ... `subject_40`: 40 people, not one `subject`
        meta[f"real/s{i}.png"] = {"label": 0, "identity": f"subject_{i + 1:02d}"}
        meta[f"fake/s{i}.png"] = {"label": 1, "identity": f"subject_{i + 1:02d}", "source": f"donor_{i + 1:02d}"}
    _touch(tmp_path, *meta)
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    n, _ = _clusters(tmp_path, "folder")
    assert n == 40


def test_split_keeps_clusters_whole_and_a_join_moves_one_side_only() -> None:
    persons = [[f"p{i}"] for i in range(300)] + [[f"p{i}", f"p{i + 1}"] for i in range(0, 300, 3)]
    keys = [f"s{i}" for i in range(len(persons))]
    names = cluster_names(persons, keys)
    split = assign_splits(names, 0.15, 0.15, seed=1)
    comp = person_components(persons)
    for c in np.unique(comp):
        assert len({split[names[i]] for i in np.flatnonzero(comp == c)}) == 1
    # New data joining two clusters: the joined one is named by the smaller name and takes its split.
    a, b = "p1", "p2"  # p1 sits with p0 (the swap p0_p1), p2 alone
    joined = cluster_names([*persons, [a, b]], [*keys, "new"])
    assert joined[1] == joined[2] == names[0] == "p0"
    assert assign_splits(joined, 0.15, 0.15, 1)["p0"] == split["p0"]  # the smaller name's side never moves
