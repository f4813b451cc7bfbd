"""int8 against fp32 on a trained ensemble, on every face crop of its project rather than the test split alone.

`dfd export --int8` (and the gate row) checks int8 on the test crops; on a small project that is a few dozen crops,
too few to tell 99.5% equal labels from 100%. This exports the project's trained members as the register stage does
(fp32 ONNX at `ensemble.export.opset`, int8 static quantisation calibrated on the first `calibration_crops`
validation crops, in each format asked for) and scores every other crop of the faces index (test, train, the rest of
validation) with torch fp32 (what evaluation judged), ONNX Runtime fp32 and int8, and OpenVINO (the same files)
where it is installed. Per engine and split: the share of equal labels at the evaluated threshold, max |d fused
logit| before calibration, max |dP(fake)|, and the AUC difference; then how many crops lie within that engine's
max |dP| of the threshold (the ones a shift that size could flip: with none there, 100% says little).

    python benchmarks/int8_agreement.py --project /path/to/trained/project [--formats QDQ QOperator]

The project is a folder where the pipeline ran through the ensemble stage (`artifacts/ensemble/ensemble.json`,
`artifacts/models/<member>/best.pt`, `data/faces/index.parquet`), e.g. one `dfd demo` trained. Nothing in it is
written to: the ONNX files go to a temporary folder (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dfd.evaluation.crops import iter_crop_batches
from dfd.platform.config import Params, load_params
from dfd.platform.layout import Layout
from dfd.serving.ensemble import EnsemblePredictor
from dfd.serving.onnx_export import agreement, export_member, quantize_member

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engines import cpu_line, openvino_available, set_openvino  # benchmarks/ is not a package


def load_crops(index_path: Path, rows: pd.DataFrame) -> np.ndarray:
    """RGB uint8 crops (N, H, W, 3) of `rows` of the faces index, in their order."""
    paths = [index_path.parent / c for c in rows["crop"]]
    return np.concatenate([b[0] for b in iter_crop_batches(paths, rows["label"].tolist(), 256)])


def scored(predictor: EnsemblePredictor, crops: np.ndarray) -> dict[str, Any]:
    """Member P(fake), the fused score before calibration, and the calibrated P(fake): what `agreement` compares."""
    members = predictor.member_scores(crops)
    return {"members": members, "fused": predictor.fused(members), "p": predictor.combine(members)}


def subset(s: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    return {"members": {m: p[mask] for m, p in s["members"].items()}, "fused": s["fused"][mask], "p": s["p"][mask]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, required=True, help="a project trained through the ensemble stage")
    ap.add_argument("--params", type=Path, help="its params file, for paths and ensemble.export (default: defaults)")
    ap.add_argument("--formats", nargs="+", default=["QDQ", "QOperator"], choices=["QDQ", "QOperator"])
    ap.add_argument("--max-crops", type=int, help="score only the first N crops of each split (default: all)")
    ap.add_argument("--out", type=Path, help="where the ONNX files go (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="use the ONNX files already in --out (a rerun)")
    ap.add_argument("--no-openvino", action="store_true", help="skip the OpenVINO rows")
    ap.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: torch's)")
    args = ap.parse_args()
    if args.reuse and not args.out:
        raise SystemExit("--reuse needs --out (the folder with the files of an earlier run)")
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's sessions follow torch's count (session_threads)
    params = load_params(args.params) if args.params else Params()
    export = params.ensemble.export
    layout = Layout.from_params(params, args.project.resolve())
    spec = json.loads((layout.ensemble_dir / "ensemble.json").read_text())
    checkpoints = {m: layout.model_dir(m) / "best.pt" for m in spec["members"]}
    threshold = float(spec.get("threshold", spec.get("val_eer_threshold", 0.5)))
    index = pd.read_parquet(layout.faces_index)
    val = index[index["split"] == "val"]
    calib_rows = val.head(export.calibration_crops)
    rows = index.drop(calib_rows.index)
    if args.max_crops:
        rows = rows.groupby("split", group_keys=False).head(args.max_crops)
    crops, labels, splits = load_crops(layout.faces_index, rows), rows["label"].to_numpy(), rows["split"].to_numpy()
    predictor = EnsemblePredictor.from_spec(spec, checkpoints)
    sizes = {m: member.config["input_size"] for m, member in predictor.members.items()}
    print(f"project {args.project}: members {sizes} (input px), threshold {threshold:.3f}; {len(calib_rows)} "
          f"validation crops calibrate int8, {len(crops)} other crops checked "
          f"({', '.join(f'{s} {n}' for s, n in rows['split'].value_counts().items())})")
    print(cpu_line())

    tmp = tempfile.TemporaryDirectory(prefix="dfd-int8-")
    out = args.out or Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    calibration = load_crops(layout.faces_index, calib_rows)
    files: dict[str, dict[str, Path]] = {"fp32": {}, **{f"int8-{f}": {} for f in args.formats}}
    t0 = time.perf_counter()
    for m, member in predictor.members.items():
        files["fp32"][m] = out / f"{m}.onnx"
        files.update({f"int8-{f}": {**files[f"int8-{f}"], m: out / f"{m}.{f}.onnx"} for f in args.formats})
        if args.reuse:
            missing = [str(f[m]) for f in files.values() if not f[m].is_file()]
            if missing:
                raise SystemExit(f"--reuse: not found: {', '.join(missing)}")
            continue
        export_member(checkpoints[m], files["fp32"][m], export.opset)
        x = torch.stack([member.transform(image=c)["image"] for c in calibration]).numpy()
        for f in args.formats:
            quantize_member(files["fp32"][m], files[f"int8-{f}"][m], x, f)
    print(f"{'reused' if args.reuse else 'exported'} {len(predictor.members)} members (fp32, int8 "
          f"{'/'.join(args.formats)}) in {time.perf_counter() - t0:.0f} s, opset {export.opset}")

    t0 = time.perf_counter()
    reference = scored(predictor, crops)
    engines = [("torch fp32", time.perf_counter() - t0, reference)]
    runs = [(f"onnxruntime {k}", lambda k=k: predictor.set_engine("onnxruntime", k.split("-")[0], files[k]))
            for k in files]
    if openvino_available() and not args.no_openvino:
        runs += [(f"openvino {k}", lambda k=k: set_openvino(predictor, files[k], k.split("-")[0]))
                 for k in ("fp32", "int8-QDQ") if k in files]
    for name, setup in runs:
        setup()
        t0 = time.perf_counter()
        result = scored(predictor, crops)
        engines.append((name, time.perf_counter() - t0, result))
    predictor.set_engine("torch", "fp32")

    print(f"{'engine':<26}{'split':<7}{'crops':>6}{'equal labels':>14}{'max|d fused logit|':>20}{'max|dP|':>10}"
          f"{'AUC diff':>10}{'near thr':>10}{'crops/s':>9}")
    for name, seconds, result in engines:
        for split in ["all", *sorted(set(splits))]:
            mask = np.ones(len(splits), bool) if split == "all" else splits == split
            a = agreement(subset(reference, mask), subset(result, mask), labels[mask], threshold)
            near = int(np.sum(np.abs(reference["p"][mask] - threshold) <= max(a["max_abs_dp"], 1e-12)))
            auc = "-" if a["auc_diff"] is None else f"{a['auc_diff']:+.4f}"
            rate = f"{len(crops) / seconds:9.1f}" if split == "all" else ""
            print(f"{name if split == 'all' else '':<26}{split:<7}{a['crops']:>6}{a['equal_labels']:>13.2%} "
                  f"{a['max_abs_d_fused_logit']:>19.2e}{a['max_abs_dp']:>10.1e}{auc:>10}{near:>10}{rate}",
                  flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
