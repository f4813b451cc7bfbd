"""`dfd predict`: score image and video files (or folders of them) with the registered ensemble.

One row per file (path, p_fake, label, status, agreement, frames, faces, tracks, reason, detail), written as CSV or
JSON (with every face track and the timeline), and a one-screen summary.
Reading the next files and extracting their faces run in a thread pool while the current one is scored (OpenCV,
dlib and torch release the GIL).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import pandas as pd
from tqdm import tqdm

from dfd.data.media import media_kind
from dfd.platform.errors import DfdError
from dfd.serving.media_scoring import RESULT_COLUMNS, MediaResult, MediaScorer
from dfd.serving.report import ReportWriter


class UsageError(DfdError):
    """Bad `dfd predict` arguments."""


def collect(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly (whatever their type: an unsupported one gets a row saying so) and the images and videos
    under folders, recursively, sorted.

    Raises:
        UsageError: A path that does not exist, or nothing to score.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and media_kind(f) is not None))
        elif p.exists():
            out.append(p)
        else:
            raise UsageError(f"no such file or folder: {p}")
    if not out:
        raise UsageError("no image or video files found in the given paths",
                         "supported: .png .jpg .jpeg .bmp .webp .mp4 .avi .mov .mkv .webm")
    return out


def score_files(scorer: MediaScorer, files: list[Path], method: str | None = None, workers: int = 2,
                progress: bool = True) -> Iterator[MediaResult]:
    """Score `files` in order; the next ones are read and their faces extracted in background threads meanwhile."""
    bar = tqdm(total=len(files), desc="predict", unit="file", disable=not progress)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        # A bounded window ahead: the crops of many videos would not fit in memory.
        window = max(2, workers * 2)
        futures = [pool.submit(scorer.prepare_path, f) for f in files[:window]]
        for i in range(len(files)):
            found, res = futures[i].result()
            futures[i] = None  # type: ignore[call-overload]  # drop the crops once scored
            if i + window < len(files):
                futures.append(pool.submit(scorer.prepare_path, files[i + window]))
            yield scorer.score_found(found, res, method)
            bar.update(1)
    bar.close()


def save_crops(res: MediaResult, root: Path, index: int) -> None:
    """Write each face crop of one file as PNG, its frame and P(fake) in the name, under `root/<index>_<stem>/`."""
    dest = root / f"{index:05d}_{Path(res.path).stem}"
    dest.mkdir(parents=True, exist_ok=True)
    for c in res.crops:
        name = f"frame{c['frame']:05d}_face{c['track']}_p{c['p_fake']:.3f}.png"
        cv2.imwrite(str(dest / name), cv2.cvtColor(c["crop"], cv2.COLOR_RGB2BGR))


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(rows, indent=2))
    else:
        pd.DataFrame(rows, columns=RESULT_COLUMNS).to_csv(out, index=False)


def summary(rows: list[dict[str, Any]], model: str, threshold: float, method: str) -> str:
    """A one-screen summary: counts by label and by status, the most likely fakes, the files whose members disagree,
    and the files not scored."""
    scored = [r for r in rows if r["p_fake"] is not None]
    failed = [r for r in rows if r["p_fake"] is None]
    uncertain = [r for r in scored if r["status"] == "uncertain"]
    fakes = sorted((r for r in scored if r["label"] == "fake"), key=lambda r: -r["p_fake"])
    lines = [f"model {model}  threshold {threshold:.3f}  aggregation {method}",
             f"{len(rows)} files: {len(scored)} scored ({len(fakes)} fake, {len(scored) - len(fakes)} real; "
             f"{len(uncertain)} uncertain), {len(failed)} not scored"]
    for r in fakes[:10]:
        lines.append(f"  FAKE {r['p_fake']:.3f}  {r['path']}" + ("  (uncertain)" if r["status"] == "uncertain" else ""))
    if len(fakes) > 10:
        lines.append(f"  ... {len(fakes) - 10} more fakes")
    if uncertain:
        lines.append("uncertain (scored, but the members disagree: worth a second look):")
        for r in uncertain[:10]:
            lines.append(f"  {r['label'].upper():<4} {r['p_fake']:.3f}  agreement {r['agreement']:.2f}  {r['path']}")
        if len(uncertain) > 10:
            lines.append(f"  ... {len(uncertain) - 10} more")
    if failed:
        lines.append("not scored:")
        for r in failed[:15]:
            lines.append(f"  {r['reason']:<11} {r['path']}" + (f"  ({r['detail']})" if r["detail"] else ""))
        if len(failed) > 15:
            lines.append(f"  ... {len(failed) - 15} more")
    return "\n".join(lines)


def run_predict(scorer: MediaScorer, paths: list[str], model_uri: str, out: Path | None = None,
                method: str | None = None, crops_dir: Path | None = None, progress: bool = True,
                on_result: Callable[[MediaResult], object] | None = None, report: ReportWriter | None = None,
                ) -> int:
    """The command: score, write, summarise. Returns the exit code (0 all scored, uncertain ones included; 1 some
    not).

    `on_result` sees each file's result with its crops (`--log`: the traffic log); `report` writes each file's
    HTML report (`--report`).
    """
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        raise UsageError(f"--out must end in .csv or .json: {out}")
    files = collect(paths)
    rows = []
    for i, res in enumerate(score_files(scorer, files, method, progress=progress)):
        if crops_dir is not None and res.crops:
            save_crops(res, crops_dir, i)
        if on_result is not None:
            on_result(res)
        if report is not None:
            report.add(res, files[i])
        # JSON carries one entry per face track and the timeline; CSV their number.
        rows.append(res.json_row() if out is not None and out.suffix.lower() == ".json" else res.row())
    if out is not None:
        write_table(rows, out)
    print(summary(rows, model_uri, scorer.threshold, scorer.aggregation_for(method).method))
    if out is not None:
        print(f"results: {out}")
    if report is not None:
        print(f"reports: {report.close()}")
    return 1 if any(r["p_fake"] is None for r in rows) else 0
