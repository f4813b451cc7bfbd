"""Reruns that cost what changed: ingest reads no file of an unchanged tree (one memo with the stage cache), and
the faces cache trusts crops by the size recorded at write, decoding them only on demand."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from dfd.data.provenance import dir_hash
from dfd.platform.file_memo import FileHasher
from dfd.platform.layout import Layout
from dfd.platform.stage_cache import MEMO_FILE, StageCache
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
    memo = StageCache(layout.artifacts, tiny_project).dir / MEMO_FILE  # the stage cache's own memo
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
    with sqlite3.connect(memo) as con:
        assert con.execute("SELECT md5 FROM files WHERE path = ?", (os.path.abspath(files[1]),)).fetchone()[0]
    con.close()


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


def test_folder_digest_is_remembered_by_the_stamps_of_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / "sub" / f"{i}.bin").write_bytes(bytes([i]) * 10)
    memo = tmp_path / MEMO_FILE
    h = FileHasher(memo)
    digest = h.path(folder)
    h.save()
    with sqlite3.connect(memo) as con:  # a planted digest comes back: unchanged stamps, no lookup per file
        assert con.execute("UPDATE trees SET digest = 'planted' WHERE path = ?", (str(folder),)).rowcount == 1
    con.close()
    assert FileHasher(memo).path(folder) == "planted"
    f = folder / "sub" / "1.bin"
    _plant(f, b"\1" * 9 + b"\2")  # content changed behind the stamp: still trusted, as DVC's state does
    assert FileHasher(memo).path(folder) == "planted"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # the stamp moves: hashed again
    again = FileHasher(memo).path(folder)
    assert again not in ("planted", digest) and again.endswith(".dir")
    (folder / "sub" / "3.bin").write_bytes(b"new")
    assert FileHasher(memo).path(folder) != again  # a new file changes the digest


def test_damaged_memo_costs_a_rehash_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    memo = tmp_path / MEMO_FILE
    memo.write_bytes(b"this is not a database" * 100)
    h = FileHasher(memo)
    assert h.file(f) == "900150983cd24fb0d6963f7d28e17f72"  # md5("abc"), read from the file
    h.save()
    assert memo.read_bytes().startswith(b"this is not a database")  # not the product's to delete
    assert "unusable" in caplog.text or "unreadable" in caplog.text


def test_stage_ingest_skips_an_unchanged_dataset_and_reruns_on_a_new_file(tiny_project: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """What `dfd stage ingest` runs (flows.cli_stages.ingest_cached): the flow's stage check, without Prefect."""
    from flows.cli_stages import ingest_cached

    params = tiny_params(tiny_project)
    layout = Layout.from_params(params, tiny_project)
    first = ingest_cached(params, layout)
    written = layout.manifest.stat().st_mtime_ns
    assert "ingest: running (no record" in capsys.readouterr().out
    second = ingest_cached(params, layout)
    assert "ingest: up to date" in capsys.readouterr().out
    assert second == first and layout.manifest.stat().st_mtime_ns == written  # nothing rewritten
    forced = ingest_cached(params, layout, force=True)
    assert "forced (--force)" in capsys.readouterr().out and forced.samples == first.samples
    real = sorted((tiny_project / "raw" / "real").iterdir())[0]
    shutil.copy(real, real.with_name("idnew_0.png" if real.suffix == ".png" else f"idnew_0{real.suffix}"))
    third = ingest_cached(params, layout)
    assert "ingest: running (changed: dep raw)" in capsys.readouterr().out
    # the copy has the same content: reported as a duplicate, and the manifest rewritten
    assert third.bad == first.bad + 1 and layout.manifest.stat().st_mtime_ns != written


def test_dvc_listing_is_the_bytes_json_dumps_writes() -> None:
    """The dataset hash must stay exactly DVC's: the listing written directly equals json.dumps's, escapes included."""
    from dfd.data.provenance import dvc_listing

    md5s = {"a/b.png": "0" * 32, 'é/ü"q\\.mp4': "1" * 32, "z": "2" * 32, "a-b": "3" * 32, "日本/\t.jpg": "4" * 32}
    want = json.dumps([{"md5": m, "relpath": r} for r, m in sorted(md5s.items())], sort_keys=True)
    assert dvc_listing(md5s) == want and dvc_listing({}) == json.dumps([])
