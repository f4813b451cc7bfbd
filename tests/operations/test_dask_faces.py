"""Face extraction on Dask (`runner.kind: dask`): a LocalCluster of two worker processes gives the same crop bytes
and index rows as the local pool; a worker killed mid-chunk costs that chunk's rerun, and nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import distributed  # a plain import: a broken install must fail here, not skip
import pandas as pd
import pytest

from dfd.platform.layout import Layout
from tasks import faces, ingest
from tests.helpers import tiny_params


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """The LocalCluster `runner.kind: dask` starts without an address (two single-threaded worker processes with
    nannies, as `dask worker` runs them), shared by address so that one start serves every test here."""
    from dfd.data.face_cluster import dask_client

    with dask_client(None, 2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        yield client


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, faces.FacesResult]:
    """The tiny dataset ingested, and extracted by the local pool (the bytes every other path must match)."""
    root = tmp_path_factory.mktemp("dask_faces")
    shutil.copytree(tiny_dataset, root / "raw")
    params = tiny_params(root)
    layout = Layout.from_params(params, root)
    ingest.run(params, layout)
    return root, faces.run(params, layout)


def _run(root: Path, workdir: str, runner: dict) -> tuple[Layout, faces.FacesResult]:
    params = tiny_params(root, runner=runner)
    layout = Layout.from_params(params, root)
    other = Layout(layout.root, root / workdir, layout.artifacts, layout.dataset)
    ref = Layout.from_params(tiny_params(root), root)
    res = faces.extract_faces(params.faces, ref.manifest, layout.resolve(params.data.root), other.faces_dir,
                              other.faces_index, other.faces_report, runner=params.runner)
    return other, res


def _same_as(reference_root: Path, layout: Layout) -> None:
    ref = Layout.from_params(tiny_params(reference_root), reference_root)
    a, b = pd.read_parquet(ref.faces_index), pd.read_parquet(layout.faces_index)
    pd.testing.assert_frame_equal(a, b)
    for crop in a["crop"]:
        assert (ref.faces_index.parent / crop).read_bytes() == (layout.faces_index.parent / crop).read_bytes(), crop
    ra, rb = json.loads(ref.faces_report.read_text()), json.loads(layout.faces_report.read_text())
    assert {k: v for k, v in ra.items() if k not in ("extracted", "skipped")} == \
        {k: v for k, v in rb.items() if k not in ("extracted", "skipped")}
    assert not list(layout.faces_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_a_local_dask_cluster_matches_the_local_pool(reference: tuple[Path, faces.FacesResult],
                                                     cluster: object) -> None:
    root, ref = reference
    with distributed.get_task_stream(cluster) as stream:
        layout, res = _run(root, "dask_same", {"kind": "dask", "address": cluster.scheduler.address})
    assert res.extracted == ref.extracted > 0 and res.crops == ref.crops
    _same_as(root, layout)
    workers = {t["worker"] for t in stream.data if t["key"].startswith("faces-")}
    assert len(workers) == 2  # spread over both worker processes


@pytest.mark.slow
def test_a_killed_worker_reruns_its_chunk(reference: tuple[Path, faces.FacesResult], cluster: object) -> None:
    root, ref = reference
    client = cluster
    samples = ref.extracted
    runner = {"kind": "dask", "address": client.scheduler.address, "faces_chunk": (samples + 1) // 2}
    out: dict = {}
    with distributed.get_task_stream(client) as stream:
        thread = threading.Thread(target=lambda: out.update(res=_run(root, "dask_kill", runner)))
        thread.start()
        faces_dir = root / "dask_kill" / "faces"
        deadline = time.monotonic() + 120
        while not list(faces_dir.rglob("faces.json")) and time.monotonic() < deadline:
            time.sleep(0.005)
        busy = [addr for addr, keys in client.processing().items() if keys]
        pids = client.run(os.getpid)
        done_at_kill = len(list(faces_dir.rglob("faces.json")))
        os.kill(pids[busy[0]], signal.SIGKILL)  # mid-chunk: its other samples are not done yet
        thread.join(180)
    assert not thread.is_alive() and "res" in out
    assert 0 < done_at_kill < samples
    layout, res = out["res"]
    assert res.crops == ref.crops and res.extracted == samples  # samples of the killed attempt count once
    _same_as(root, layout)
    runs = [t for t in stream.data if t["key"].startswith("faces-")]
    assert len({t["key"] for t in runs}) == 2  # two chunks, both finished (the killed one on a second attempt)
    again = _run(root, "dask_kill", runner)[1]  # the next run skips what is done, without a worker
    assert again.extracted == 0 and again.skipped == samples


def test_an_unreachable_scheduler_is_one_line() -> None:
    from dfd.data.face_cluster import dask_client
    from dfd.platform.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:9"), \
            dask_client("tcp://127.0.0.1:9", 1, timeout_s=1):
        pass


@pytest.mark.slow
def test_evaluation_datasets_extract_on_the_cluster(reference: tuple[Path, faces.FacesResult],
                                                    cluster: object) -> None:
    from tasks.eval_datasets import eval_layout, prepare

    root, _ = reference
    # Four images of the training set in which the local pool found a face (MTCNN misses a few drawn ones): the
    # same code path, a fraction of the work.
    ref_layout = Layout.from_params(tiny_params(root), root)
    with_face = set(pd.read_parquet(ref_layout.faces_index).merge(pd.read_parquet(ref_layout.manifest)[
        ["sample_id", "path"]], on="sample_id")["path"])
    few = root / "few"
    for rel in [*[p for p in sorted((root / "raw").glob("real/*.png")) if f"real/{p.name}" in with_face][:2],
                *[p for p in sorted((root / "raw").glob("fake/*.png")) if f"fake/{p.name}" in with_face][:2]]:
        (few / rel.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(rel, few / rel.parent.name / rel.name)
    params = tiny_params(root, runner={"kind": "dask", "address": cluster.scheduler.address},
                         evaluate={"datasets": [{"name": "again", "root": str(few)}]})
    layout = Layout.from_params(params, root)
    with distributed.get_task_stream(cluster) as stream:
        index = prepare(params, layout, params.evaluate.datasets[0])
    assert any(t["key"].startswith("faces-") for t in stream.data)  # extracted by the workers
    el = eval_layout(layout, params.evaluate.datasets[0])
    got = pd.read_parquet(index).merge(pd.read_parquet(el.manifest)[["sample_id", "path"]], on="sample_id")
    want = pd.read_parquet(ref_layout.faces_index).merge(pd.read_parquet(ref_layout.manifest)[["sample_id", "path"]],
                                                         on="sample_id")
    assert len(got) == 4 and got["dataset"].eq("again").all()
    # Same source files, so the same crop bytes as the local pool's, under the eval set's own sample ids.
    for path, crop in zip(got["path"], got["crop"], strict=True):
        ref_crop = want.loc[want["path"] == path, "crop"].item()
        assert (el.faces_index.parent / crop).read_bytes() == (ref_layout.faces_index.parent / ref_crop).read_bytes()


@pytest.mark.slow
def test_the_flows_faces_task_extracts_on_the_cluster(reference: tuple[Path, faces.FacesResult], cluster: object,
                                                      prefect_server: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The faces stage as `dfd run` calls it (its Prefect task, its MLflow run, the stage check) with
    `runner.kind: dask`: the samples whose crops are gone are extracted by the workers, to the same bytes."""
    from prefect import flow

    from dfd.platform.tracking import Tracker
    from flows.stages import faces_task

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, ref = reference
    params = tiny_params(root, runner={"kind": "dask", "address": cluster.scheduler.address})
    layout, tracker = Layout.from_params(params, root), Tracker.from_params(params, root)
    index = pd.read_parquet(layout.faces_index)
    gone = sorted(index["sample_id"].unique())[:3]
    kept = {c: (layout.faces_index.parent / c).read_bytes() for c in index["crop"] if c.split("/")[0] in gone}
    for sample in gone:
        shutil.rmtree(layout.faces_dir / sample)

    @flow(name="dask-faces")
    def faces_flow() -> faces.FacesResult:
        with tracker.run("pipeline") as parent:
            return faces_task(params, layout, tracker, parent)

    with distributed.get_task_stream(cluster) as stream:
        res = faces_flow()
    assert res.extracted == len(gone) and res.skipped == ref.extracted - len(gone) and res.crops == ref.crops
    assert any(t["key"].startswith("faces-") for t in stream.data)  # extracted by the cluster's workers
    assert all((layout.faces_index.parent / c).read_bytes() == b for c, b in kept.items())
    pd.testing.assert_frame_equal(pd.read_parquet(layout.faces_index), index)
