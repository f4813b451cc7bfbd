"""Exporting the ensemble's members to ONNX (fp32, and int8 by static quantisation), checked against PyTorch.

`export_ensemble` writes, for every member, `<member>.onnx` (and `<member>.int8.onnx`) and an `export.json` report:
the members and the whole ensemble scored on the test crops by torch fp32 (what evaluation judged) and by each ONNX
Runtime precision, with max |dP(fake)| per member and for the ensemble, max |d fused logit| before calibration, the
test AUC of each and its difference, and (int8) the share of equal labels at the evaluated threshold. The register
stage logs the files and the report with the version; the gate reads the int8 agreement (`dfd.evaluation.gate`).

Needs the `onnx` extra: torch 2.14's exporter (`torch.onnx.export(dynamo=True)`) uses `onnx` and `onnxscript`;
checking and quantising use `onnxruntime`.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from dfd.evaluation.crops import iter_crop_batches
from dfd.platform.errors import DfdError, StageError
from dfd.platform.export_config import ExportParams
from dfd.platform.files import write_json
from dfd.platform.ops_config import ServeParams
from dfd.serving.ensemble import EnsemblePredictor
from dfd.serving.onnx_engine import INSTALL_HINT
from models.checkpoint import build_from_checkpoint, load_checkpoint

log = logging.getLogger(__name__)

#: What the exporter and the checks import: the `onnx` extra of pyproject.toml.
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INPUT, OUTPUT = "crops", "logit"
#: Operators that int8 quantises: the convolutions and the classifier's Gemm carry the arithmetic. Every MatMul stays
#: float, F3Net's DCTs (FAD's D x D^T, LFS's patch DCT) and its MixBlock attention among them.
QUANTISED_OPS = ["Conv", "Gemm"]


class ExportError(DfdError):
    """The exporter's packages are missing, or an exported member does not score like its checkpoint."""


def _installed(name: str) -> bool:
    if name in sys.modules:  # None there: blocked (what a test does to play a machine without it)
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def missing_packages() -> list[str]:
    """The export packages that are not installed here."""
    return [p for p in EXPORT_PACKAGES if not _installed(p)]


def export_member(checkpoint: Path, out: Path, opset: int) -> Path:
    """One member's checkpoint as an ONNX file with a dynamic batch (input `crops` (N, 3, S, S), output `logit`)."""
    ckpt = load_checkpoint(checkpoint)
    model = build_from_checkpoint(ckpt).eval()
    size = int(ckpt["model_config"]["input_size"])
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (example,), str(out), dynamo=True, opset_version=opset, input_names=[INPUT],
                      output_names=[OUTPUT], dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    return out


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over preprocessed validation crops, one batch at a time."""

    def __init__(self, x: np.ndarray, batch: int = 4) -> None:  # 8 full-size crops at once: 5.6 GB, OOM-killed
        self._batches: Iterator[np.ndarray] = iter([x[i:i + batch] for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._batches, None)
        return None if nxt is None else {INPUT: nxt}


def quantize_member(fp32: Path, out: Path, calibration: np.ndarray, quant_format: str) -> Path:
    """int8 static quantisation of `fp32` (per-channel int8 weights, uint8 activations, min-max ranges).

    Args:
        fp32: The member's fp32 ONNX file.
        out: Where the int8 file goes.
        calibration: Preprocessed validation crops (N, 3, S, S) float32: their activation ranges set the scales.
        quant_format: QOperator (QLinearConv) or QDQ (QuantizeLinear/DequantizeLinear pairs that ORT fuses).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Calibration, CalibrationDataReader), {})(calibration)
    with tempfile.TemporaryDirectory(prefix="dfd-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph optimisation first (ORT's recommended step): BN folds into the convolutions.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        # Not CalibMaxIntermediateOutputs: onnxruntime 1.32's MinMax calibrator drops the batches it collected when
        # that count is reached, before it computes their ranges. Memory is bounded by the batch of 4 instead.
        quantize_static(str(prepared), str(out), reader, quant_format=getattr(QuantFormat, quant_format),
                        op_types_to_quantize=QUANTISED_OPS, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return out


def _crops(faces_index: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 crops and labels of one split of the faces index (the first `limit` in index order)."""
    index = pd.read_parquet(faces_index)
    rows = index[index["split"] == split]
    if limit is not None:
        rows = rows.head(limit)
    if rows.empty:
        raise StageError(f"no {split} crops in {faces_index}: nothing to check the ONNX members on",
                         "run the faces stage with a test and a validation split")
    paths = [faces_index.parent / c for c in rows["crop"]]
    batches = list(iter_crop_batches(paths, rows["label"].tolist(), 256))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q / (1 - q))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None


def _scored(predictor: EnsemblePredictor, crops: np.ndarray) -> dict[str, Any]:
    members = predictor.member_scores(crops)
    return {"members": members, "fused": predictor.fused(members), "p": predictor.combine(members)}


def agreement(reference: dict[str, Any], other: dict[str, Any], labels: np.ndarray, threshold: float
              ) -> dict[str, Any]:
    """How far `other`'s scores are from `reference`'s on the same crops (both as `_scored` returns them)."""
    auc_ref, auc = _auc(labels, reference["p"]), _auc(labels, other["p"])
    return {
        "crops": len(labels),
        "max_abs_dp_member": {m: float(np.max(np.abs(other["members"][m] - p)))
                              for m, p in reference["members"].items()},
        "max_abs_dp": float(np.max(np.abs(other["p"] - reference["p"]))),
        "max_abs_d_fused_logit": float(np.max(np.abs(_logit(other["fused"]) - _logit(reference["fused"])))),
        "equal_labels": float(np.mean((other["p"] >= threshold) == (reference["p"] >= threshold))),
        "auc": auc, "auc_torch": auc_ref,
        "auc_diff": None if auc is None or auc_ref is None else auc - auc_ref,
    }


def export_ensemble(cfg: ExportParams, spec: dict[str, Any], checkpoints: dict[str, Path], faces_index: Path,
                    out_dir: Path) -> dict[str, Any]:
    """Export every member (fp32, and int8 when `cfg.int8`), check them on the test crops, write `export.json`.

    Returns the report: `files` (precision -> member -> file name in `out_dir`), `fp32` and `int8` agreements
    with torch fp32 (see `agreement`), the bounds, and the opset and quantisation format.

    Raises:
        ExportError: Missing packages, or ONNX Runtime fp32 further from torch than `cfg.max_fp32_dp`.
    """
    missing = missing_packages()
    if missing:
        raise ExportError(f"exporting to ONNX needs {', '.join(missing)}", INSTALL_HINT)
    out_dir.mkdir(parents=True, exist_ok=True)
    threshold = float(spec.get("threshold", spec.get("val_eer_threshold", 0.5)))
    crops, labels = _crops(faces_index, "test", cfg.max_check_crops)
    predictor = EnsemblePredictor.from_spec(spec, checkpoints)
    reference = _scored(predictor, crops)
    files: dict[str, dict[str, str]] = {"fp32": {}}
    for m in predictor.members:
        t0 = time.perf_counter()
        export_member(checkpoints[m], out_dir / f"{m}.onnx", cfg.opset)
        files["fp32"][m] = f"{m}.onnx"
        log.info("exported %s to ONNX in %.1f s", m, time.perf_counter() - t0)
    report: dict[str, Any] = {"opset": cfg.opset, "threshold": threshold, "files": files,
                              "bounds": {"max_fp32_dp": cfg.max_fp32_dp,
                                         "int8_min_equal_labels": cfg.int8_min_equal_labels,
                                         "int8_max_logit_shift": cfg.int8_max_logit_shift}}
    if cfg.int8:
        calibration, _ = _crops(faces_index, "val", cfg.calibration_crops)
        files["int8"] = {}
        for m, member in predictor.members.items():
            x = torch.stack([member.transform(image=c)["image"] for c in calibration]).numpy()
            quantize_member(out_dir / files["fp32"][m], out_dir / f"{m}.int8.onnx", x, cfg.quant_format)
            files["int8"][m] = f"{m}.int8.onnx"
        report.update(quant_format=cfg.quant_format, quantised_ops=QUANTISED_OPS, calibration_crops=len(calibration))
    for precision, names in files.items():
        predictor.set_engine("onnxruntime", precision, {m: out_dir / f for m, f in names.items()})
        report[precision] = agreement(reference, _scored(predictor, crops), labels, threshold)
    write_json(out_dir / "export.json", report)
    fp32 = report["fp32"]
    shift = max(fp32["max_abs_dp"], *fp32["max_abs_dp_member"].values())
    if shift > cfg.max_fp32_dp:
        raise ExportError(f"ONNX Runtime fp32 moves P(fake) by {shift:.2e} from torch on the test crops "
                          f"(limit ensemble.export.max_fp32_dp {cfg.max_fp32_dp}): an operator was exported wrongly",
                          f"see {out_dir / 'export.json'}; serve with serve.engine: torch")
    return report


def format_report(report: dict[str, Any]) -> list[str]:
    """export.json as text lines: one per precision, its agreement with torch fp32 on the test crops."""
    lines = [f"ONNX opset {report['opset']}; agreement with torch fp32 on the test crops "
             f"(threshold {report['threshold']:.3f}):"]
    for precision in report["files"]:
        a = report[precision]
        auc = "-" if a["auc_diff"] is None else f"{a['auc_diff']:+.4f}"
        worst = max(a["max_abs_dp_member"].items(), key=lambda kv: kv[1])
        lines.append(f"  onnxruntime {precision:<5} {a['crops']} crops: max |dP| {a['max_abs_dp']:.2e} (worst member "
                     f"{worst[0]} {worst[1]:.2e}), max |d fused logit| {a['max_abs_d_fused_logit']:.2e}, equal labels "
                     f"{a['equal_labels']:.2%}, AUC diff {auc}")
    return lines


def export_members(cfg: ExportParams | None, spec: dict[str, Any], artifacts: dict[str, str], faces_index: Path,
                   out_dir: Path, reports_dir: Path) -> dict[str, Any] | None:
    """The members as ONNX files (`ensemble.export`), added to `artifacts` with their report; None when off.

    Artifacts: `onnx_<precision>_<member>` (the files the onnxruntime engine loads) and `onnx_export` (export.json,
    also written to `reports_dir`: the int8 gate row reads it).
    """
    if cfg is None or not (cfg.onnx or cfg.int8):
        return None
    checkpoints = {m: Path(artifacts[f"member_{m}"]) for m in spec["members"]}
    report = export_ensemble(cfg, spec, checkpoints, faces_index, out_dir)
    for precision, files in report["files"].items():
        artifacts.update({f"onnx_{precision}_{m}": str(out_dir / f) for m, f in files.items()})
    artifacts["onnx_export"] = str(out_dir / "export.json")
    write_json(reports_dir / "export.json", report)
    return report


def served_engine(serve: ServeParams | None, export: dict[str, Any] | None) -> dict[str, str]:
    """The pyfunc's `model_config`: the engine `mlflow models serve` runs the version on (`serve.engine`).

    ONNX Runtime in the precision `serve.precision` names when those members were exported (fp32 checked against
    torch at export, int8 by the gate); else torch fp32, as evaluated (a reduced torch precision is checked only by
    `dfd serve`'s loader, which MLflow's server does not run).
    """
    if serve is None or serve.engine == "torch":
        return {"engine": "torch", "precision": "fp32"}
    if export is None or serve.precision not in export["files"]:
        log.warning("serve.engine onnxruntime %s: those ONNX members are not exported (ensemble.export); the "
                    "version is logged to run on torch fp32", serve.precision)
        return {"engine": "torch", "precision": "fp32"}
    return {"engine": serve.engine, "precision": serve.precision}
