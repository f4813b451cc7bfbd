"""The schema of `ensemble.export`: the members exported to ONNX (and int8) at registration, and the int8 gate row.

Split from `dfd/platform/config.py` (which re-exports it) to keep each schema module small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dfd.platform.config_base import _Section


class ExportParams(_Section):
    """ONNX export of each member, checked against PyTorch on the test crops (dfd/serving/onnx_export.py)."""

    # Off by default: it costs ~15-20 s per full-size member and needs the `onnx` extra (onnx, onnxscript,
    # onnxruntime); `serve.engine: onnxruntime` needs it on.
    onnx: bool = False
    # int8 static quantisation (ONNX Runtime, calibrated on validation crops; F3Net's DCT and every MatMul stay
    # float). Its agreement with fp32 on the test crops becomes a gate row: int8 is promoted only if it scores alike.
    int8: bool = False
    # 18: the opset torch 2.14's exporter (torchlib) writes natively (others go through a version converter) and
    # one that every ONNX Runtime since 1.14 implements in full.
    opset: int = Field(18, ge=17, le=23)
    # QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels) ran 4-11% faster than
    # QOperator (QLinearConv) on every member measured (benchmarks/predict.py --engines; MesoNet 28.0 against 25.2
    # crops/s, Xception 7.17 / 6.68, EfficientNet-B4 6.20 / 5.96) and is the format ONNX Runtime recommends.
    quant_format: Literal["QOperator", "QDQ"] = "QDQ"
    calibration_crops: int = Field(64, ge=1)  # validation crops whose activation ranges set the int8 scales
    max_check_crops: int | None = Field(None, ge=1)  # test crops scored by every engine; None: all of them
    # ONNX Runtime fp32 against PyTorch: max |d P(fake)| of any member or of the ensemble above this refuses the
    # export. Same arithmetic in another order costs a few float32 steps (1.5e-5 at most on a trained demo model's
    # 384 crops); more means an operator was exported wrongly. Not the fused logit: a member's P(fake) is float32,
    # whose logit is coarse near 0 and 1, and Platt slopes (77 on that model's F3Net) multiplied that rounding into
    # 1.46e-4 of the fused logit with no operator wrong (the shift is still recorded in export.json).
    max_fp32_dp: float = Field(1e-4, gt=0)
    # The int8 gate row: share of test crops whose label (at the evaluated threshold) int8 leaves unchanged...
    int8_min_equal_labels: float = Field(0.995, gt=0, le=1)
    # ...and the largest |d fused logit| before calibration (calibration's steps can amplify a small shift);
    # None: recorded, not bounded.
    int8_max_logit_shift: float | None = Field(None, gt=0)
