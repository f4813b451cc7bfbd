"""faces: sample frames of every manifest row, detect the face, save square PNG crops and the faces index."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from dfd.data.face_cluster import extract_on_dask
from dfd.data.face_extract import cached, detector_chain, extract_sample
from dfd.data.face_tracking import TRACK_MAX_GAP
from dfd.data.manifest import read_manifest
from dfd.platform.config import FacesParams, Params, RunnerParams
from dfd.platform.errors import DataError
from dfd.platform.files import write_json, write_parquet
from dfd.platform.layout import Layout

INDEX_COLUMNS = ["sample_id", "frame", "track", "crop", "label", "split", "identity", "persons", "method", "dataset",
                 "media", "score"]
SAMPLE_COLUMNS = ["sample_id", "dataset", "path", "media", "label", "split", "sampled", "faces", "face_share", "crops",
                  "note"]
WORST_NAMED = 5  # samples named in the one-line face-share error; the full list is in faces_samples.parquet


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _init_worker() -> None:
    """Die with the stage (a SIGKILLed parent must not leave workers blocked forever on its queue), and use one
    OpenCV thread per worker process: the processes already fill the cores, and threads would contend."""
    import multiprocessing as mp

    import cv2

    from dfd.platform.procs import die_with_parent

    parent = mp.parent_process()
    die_with_parent(parent_pid=parent.pid if parent else None)
    cv2.setNumThreads(1)


@dataclass(frozen=True)
class FacesResult:
    """Paths written by the faces stage, and what it did."""

    index: Path
    report: Path
    crops: int
    samples_without_face: int
    extracted: int
    skipped: int
    samples: Path | None = None


def sample_table(results: list[dict], by_id: dict[str, dict], chain: list[str]) -> pd.DataFrame:
    """One row per sample: frames sampled, frames with a face, their share, and `by_<detector>`: how many of
    those frames each detector of the chain found (records written before the chain count as the first one)."""
    rows = []
    for r in results:
        rep, meta = r["report"], by_id[r["sample_id"]]
        row = {**{k: meta.get(k) for k in ("sample_id", "dataset", "path", "media", "label", "split")},
               "sampled": rep["sampled"], "faces": rep["faces"], "crops": rep.get("crops", len(r["frames"])),
               "face_share": rep["faces"] / rep["sampled"] if rep["sampled"] else 0.0, "note": rep["note"]}
        first = {}
        for f in r["frames"]:
            first.setdefault(f["frame"], f.get("detector") or chain[0])
        for name in chain:
            row[f"by_{name}"] = sum(d == name for d in first.values())
        rows.append(row)
    return pd.DataFrame(rows, columns=[*SAMPLE_COLUMNS, *(f"by_{n}" for n in chain)])


def check_face_share(table: pd.DataFrame, share: float, minimum: float, where: str, samples_path: Path) -> None:
    """Fail in one line naming the worst samples when the overall face share is below `minimum` (0: off)."""
    if minimum <= 0 or share >= minimum:
        return
    worst = table[table["sampled"] > 0].sort_values(["face_share", "sampled"], ascending=[True, False])
    named = ", ".join(f"{r.sample_id} ({r.faces}/{r.sampled})" for r in worst.head(WORST_NAMED).itertuples())
    raise DataError(f"faces found in {share:.1%} of sampled frames, below {where} {minimum:.0%}; worst samples: "
                    f"{named}", f"see {samples_path}; try another faces.detector or a faces.fallback, or lower {where}")


def extract_faces(cfg: FacesParams, manifest_path: Path, dataset_root: Path, out_dir: Path, index_path: Path,
                  report_path: Path, samples_path: Path | None = None, min_face_share: float | None = None,
                  share_key: str = "faces.min_face_share", runner: RunnerParams | None = None,
                  verify_crops: bool = False, track_max_gap: int = TRACK_MAX_GAP) -> FacesResult:
    """Extract faces of every sample in the manifest, skipping samples already done with the same params.

    Samples with no face, undecodable frames or truncated files are recorded in the report with a reason;
    they never stop the stage unless no face at all is found.

    Args:
        cfg: Face params (detector, sampling, margin, crop size, workers).
        manifest_path: The ingest stage's manifest.
        dataset_root: Root the manifest's paths are relative to.
        out_dir: Where `<sample_id>/<frame>.png` crops go.
        index_path: The faces index (parquet), one row per crop.
        report_path: The JSON report (the summary that ships with every model version).
        samples_path: Per-sample face share and detectors (parquet); default: beside the report.
        min_face_share: Overrides `cfg.min_face_share` (evaluation datasets: off unless set); 0 is off.
        share_key: The params key the share gate's error names.
        runner: With `kind: dask`, samples are extracted by chunks on a Dask cluster (`runner.address`, or a local
            cluster of `runner.dask_workers` processes) instead of the local process pool.
        verify_crops: Decode every recorded crop before trusting it, instead of checking its recorded size.
        track_max_gap: With `faces.all_faces`, the tracker's gap (`serve.track_max_gap`): the faces index's tracks
            are the tracks serving forms, which the evaluate stage judges `serve.file_rule: worst_track` on.
    """
    manifest = read_manifest(manifest_path)
    samples = manifest.to_dict("records")
    opts = cfg.model_dump()
    if cfg.all_faces:  # only then: a track id decides crop names, and the largest-face caches must stay valid
        opts["track_max_gap"] = track_max_gap
    args = (str(dataset_root.resolve()), str(out_dir.resolve()), opts)  # absolute: workers may run elsewhere
    # Finished samples are read back here, so a rerun with little new work starts few or no workers.
    results = [r for r in (cached(s, *args, decode=verify_crops) for s in samples) if r is not None]
    done = {r["sample_id"] for r in results}
    pending = [s for s in samples if s["sample_id"] not in done]
    bar = tqdm(total=len(pending), desc="faces", unit="sample", leave=False)
    if runner is not None and runner.kind == "dask" and pending:
        # Largest files first, as below: the long videos start early.
        pending.sort(key=lambda s: _size(dataset_root / s["path"]), reverse=True)
        results += extract_on_dask(pending, *args, address=runner.address, n_workers=runner.dask_workers,
                                   chunk=runner.faces_chunk, on_done=bar.update)
    elif cfg.workers > 1 and len(pending) > 1:
        # spawn, not fork: the caller may hold threads (Prefect, torch) that a forked child would inherit locked.
        ctx = multiprocessing.get_context("spawn")
        # Largest files first: the long videos start early instead of leaving one worker alone at the end.
        pending.sort(key=lambda s: _size(dataset_root / s["path"]), reverse=True)
        pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker)
        try:
            # Small chunks: videos differ tenfold in cost, and big chunks leave one worker idle at the end.
            chunk = max(1, len(pending) // (cfg.workers * 16))
            for res in pool.map(extract_sample, pending, *[[a] * len(pending) for a in args], chunksize=chunk):
                results.append(res)
                bar.update(1)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed: drop the queued samples instead of finishing them all first;
            # finished samples are on disk with their faces.json, so the next run resumes after them.
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        for sample in pending:
            results.append(extract_sample(sample, *args))
            bar.update(1)
    bar.close()
    order = {s["sample_id"]: i for i, s in enumerate(samples)}
    results.sort(key=lambda r: order[r["sample_id"]])  # the report lists samples in manifest order, however run
    by_id = {s["sample_id"]: s for s in samples}
    chain = detector_chain(opts)
    rows = [{**{k: by_id[r["sample_id"]][k] for k in ("sample_id", "label", "split", "identity", "method",
                                                      "dataset", "media")},
             # the persons as a list (parquet hands back arrays); a manifest written before them: the cluster name
             "persons": list(by_id[r["sample_id"]].get("persons", [by_id[r["sample_id"]]["identity"]])),
             "frame": f["frame"], "track": f.get("track", 0), "crop": f"{out_dir.name}/{f['crop']}",
             "score": f["score"], "detector": f.get("detector") or chain[0],
             "landmarks": f.get("landmarks")}
            for r in results for f in r["frames"]]
    reports = [r["report"] for r in results]
    no_face = [r for r in reports if r["faces"] == 0]
    sampled = sum(r["sampled"] for r in reports)
    with_face = sum(r["faces"] for r in reports)
    table = sample_table(results, by_id, chain)
    samples_path = samples_path or report_path.with_name("faces_samples.parquet")
    write_parquet(table, samples_path)
    report = {"samples": len(samples), "frames_sampled": sampled, "frames_with_face": with_face, "crops": len(rows),
              "face_share": with_face / sampled if sampled else 0.0,
              "frames_by_detector": {n: int(table[f"by_{n}"].sum()) for n in chain},
              "extracted": sum(not r["skipped"] for r in results), "skipped": sum(r["skipped"] for r in results),
              "problems": [r for r in reports if r["note"]], "params": opts}
    write_json(report_path, report)
    if not rows:
        raise DataError(f"no face found in any of {len(samples)} samples",
                        f"see {report_path}; try faces.upsample: 2 or faces.fallback: [mtcnn]")
    check_face_share(table, report["face_share"], cfg.min_face_share if min_face_share is None else min_face_share,
                     share_key, samples_path)
    index = pd.DataFrame(rows)[[*INDEX_COLUMNS, "detector", "landmarks"]]
    write_parquet(index.sort_values(["sample_id", "frame"]).reset_index(drop=True), index_path)
    return FacesResult(index_path, report_path, len(rows), len(no_face), report["extracted"], report["skipped"],
                       samples_path)


def run(params: Params, layout: Layout) -> FacesResult:
    """The stage as `dfd stage faces` and the flow call it."""
    return extract_faces(params.faces, layout.manifest, layout.resolve(params.data.root), layout.faces_dir,
                         layout.faces_index, layout.faces_report, layout.faces_samples, runner=params.runner,
                         verify_crops=verify_crops(), track_max_gap=params.serve.track_max_gap)


def verify_crops() -> bool:
    """`DFD_VERIFY_CROPS=1`: decode every recorded crop on this run (a check on demand; reruns stat them)."""
    return os.environ.get("DFD_VERIFY_CROPS", "").strip().lower() in ("1", "true", "yes")
