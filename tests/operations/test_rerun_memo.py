"""Reruns that cost what changed: ingest reads no file of an unchanged tree (one memo with the stage cache), and
the faces cache trusts crops by the size recorded at write, decoding them only on demand."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.provenance import dir_hash
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import FileHasher, StageCache
from tasks import faces, ingest
from tests.helpers import tiny_params


def _plant(path: Path, data: bytes) -> None:
    """Overwrite a file's content in place keeping its size, mtime and inode: only a reader can tell."""
    st = path.stat()
    assert len(data) == st.st_size
    with path.open("r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _ingest(params, layout: Layout, memo: Path) -> dict:  # type: ignore[no-untyped-def]
    """Ingest with a fresh view of the memo file, as a new process has."""
    ingest.ingest(params.data, params.ingest, layout.resolve(params.data.root), layout.manifest,
                  layout.ingest_report, params.train.seed, FileHasher(memo))
    return json.loads(layout.ingest_report.read_text())


def test_unchanged_reingest_reads_no_file_and_keeps_dvcs_hash(tiny_project: Path) -> None:
    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    raw = tiny_project / "raw"
    memo = StageCache(layout.artifacts, tiny_project).dir / "hashes.json"  # the stage cache's own memo
    first = _ingest(params, layout, memo)
    assert first["data_hash"] == dir_hash(raw) and not first["bad"]  # DVC's hash, computed through the memo
    # Every medium's bytes replaced by garbage of the same size, stamp kept: a run that read any would see corrupt
    # media (bad rows) and another data hash. (metadata.json, the labels, is the adapter's to read every time.)
    files = sorted(p for p in raw.rglob("*") if p.is_file() and p.suffix in (".png", ".mp4"))
    for p in files:
        _plant(p, b"\0" * p.stat().st_size)
    second = _ingest(params, layout, memo)
    assert second["data_hash"] == first["data_hash"] and second["bad"] == [] and second["samples"] == first["samples"]
    # A file whose stamp changed is read again (1 of them): its garbage is found, and the hash moves.
    os.utime(files[0], ns=(files[0].stat().st_atime_ns, files[0].stat().st_mtime_ns + 10**9))
    third = _ingest(params, layout, memo)
    assert [b["path"] for b in third["bad"]] == [files[0].relative_to(raw).as_posix()]
    assert third["data_hash"] != first["data_hash"]
    # The stage cache reads the same memo: its dep hash of the dataset costs no read either.
    assert StageCache(layout.artifacts, tiny_project).hasher.path(raw) is not None
    assert json.loads(memo.read_text())[os.path.abspath(files[1])][3] is not None


def test_faces_rerun_trusts_recorded_sizes_and_decodes_on_demand(tiny_project: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    first = faces.run(params, layout)
    index = pd.read_parquet(first.index)
    crop = layout.faces_index.parent / index["crop"].iloc[0]
    record = json.loads((crop.parent / "faces.json").read_text())
    assert {f["crop"]: f["bytes"] for f in record["frames"]}[index["crop"].iloc[0].split("/", 1)[1]] == \
        crop.stat().st_size  # the size recorded at write
    assert not list(layout.faces_dir.rglob("*.tmp"))
    original = crop.read_bytes()
    _plant(crop, b"\0" * len(original))  # same size: the fast path (a stat) cannot tell, and does not decode
    second = faces.run(params, layout)
    assert second.extracted == 0 and second.skipped == first.extracted
    monkeypatch.setenv("DFD_VERIFY_CROPS", "1")  # on demand: every crop decoded, the planted one found
    third = faces.run(params, layout)
    assert third.extracted == 1 and crop.read_bytes() == original  # re-extracted: the same bytes as before
    shutil.rmtree(layout.faces_dir / index["sample_id"].iloc[-1])
    monkeypatch.delenv("DFD_VERIFY_CROPS")
    assert faces.run(params, layout).extracted == 1
