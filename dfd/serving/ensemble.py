"""Scoring face crops with trained members and the fitted ensemble: shared by evaluation and the served model."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfd.evaluation.calibration import apply_post_calibration, calibrate
from dfd.evaluation.fusion import apply_fusion
from dfd.training.augment import build_transform
from models.checkpoint import build_from_checkpoint, load_checkpoint

#: Inference precisions: fp32 scores exactly what evaluation scored; bf16/fp16 autocast trades a small, measured
#: error in P(fake) (`EnsemblePredictor.precision_error`) for speed (CPUs with AVX512-BF16 or AMX; GPUs).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# Crops per forward pass. Measured on a 2-core AVX-512 CPU (benchmarks/predict.py): Xception at 299 px costs
# 105 ms a crop in batches of 1-2, 132 in batches of 8 and 300 in batches of 32 (activations overflow the caches);
# 4 is within 10% of the best for every member. GPUs want large batches.
CPU_BATCH, GPU_BATCH = 4, 64


class MemberModel:
    """One trained detector with its own preprocessing (input size, normalisation) from its checkpoint.

    Inference runs in channels-last memory format (oneDNN's and cuDNN's fast convolution layout: the same arithmetic,
    about 1.2x faster on CPU) under `torch.inference_mode`.
    """

    engine = "torch"

    def __init__(self, checkpoint: Path, device: str = "cpu", precision: str = "fp32") -> None:
        ckpt = load_checkpoint(checkpoint)
        self.config = ckpt["model_config"]  # the registered preprocessing, saved beside the weights
        self.device = torch.device(device)
        self.model = build_from_checkpoint(ckpt).to(self.device).to(memory_format=torch.channels_last).eval()
        self.transform = build_transform([], train=False, input_size=self.config["input_size"],
                                         mean=tuple(self.config["mean"]), std=tuple(self.config["std"]))
        self.precision = "fp32"
        self.set_precision(precision)

    def set_precision(self, precision: str) -> None:
        """Score in `precision` from now on (fp32, bf16, fp16)."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}': one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("fp16 inference needs a GPU: on CPU use bf16 (or fp32)")
        self.precision = precision

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = PRECISIONS[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """P(fake) for RGB uint8 crops of shape (N, H, W, 3)."""
        batch_size = batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH)
        out = []
        for i in range(0, len(crops), batch_size):
            x = torch.stack([self.transform(image=c)["image"] for c in crops[i:i + batch_size]])
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x)
            out.append(torch.sigmoid(logits.float().squeeze(1)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


class EnsemblePredictor:
    """The fitted ensemble over member models: member Platt scaling, fusion, then calibration of the fused score.

    Args:
        checkpoints: Member name to its best.pt.
        weights: Member name to its ensemble weight (the fusion when `fusion` is None: a weighted average).
        calibration: Member name to its Platt scaling (a, b), applied before fusion; None: raw probabilities.
        device: Torch device for all members.
        fusion: The fitted fusion of ensemble.json (`{"method", "members", ...}`); None: the weighted average.
        post_calibration: The fitted calibration of the fused score (ensemble.json); None: none.
        precision: Inference precision of every member (`PRECISIONS`); fp32 scores exactly as evaluated.
    """

    def __init__(self, checkpoints: dict[str, Path], weights: dict[str, float],
                 calibration: dict[str, list[float]] | None = None, device: str = "cpu",
                 fusion: dict[str, Any] | None = None, post_calibration: dict[str, Any] | None = None,
                 precision: str = "fp32") -> None:
        names = list(fusion["members"]) if fusion else list(weights)
        missing = set(names) - set(checkpoints)
        if missing:
            raise ValueError(f"no checkpoint for ensemble members {sorted(missing)}")
        self.checkpoints, self.device = {m: Path(checkpoints[m]) for m in names}, device
        self.members: dict[str, Any] = {m: MemberModel(checkpoints[m], device, precision) for m in names}
        self.engine = "torch"
        total = sum(weights.values()) or 1.0  # stacking's signed shares may sum to 0; they only inform then
        self.weights = {m: w / total for m, w in weights.items()}
        self.calibration = calibration or {m: [1.0, 0.0] for m in names}
        self.fusion = fusion or {"method": "weighted_average", "members": names, "weights": self.weights}
        self.post_calibration = post_calibration

    @classmethod
    def from_spec(cls, spec: dict, checkpoints: dict[str, Path], device: str = "cpu",
                  precision: str = "fp32") -> EnsemblePredictor:
        """The ensemble as the ensemble stage fitted it (`ensemble.json`), over the members' checkpoints."""
        return cls(checkpoints, spec["weights"], spec.get("calibration"), device, spec.get("fusion"),
                   spec.get("post_calibration"), precision)

    @property
    def precision(self) -> str:
        return next(iter(self.members.values())).precision

    def set_precision(self, precision: str) -> None:
        """Score in `precision` from now on (every member; torch's precisions, see `set_engine` for the others)."""
        if self.engine != "torch":
            raise ValueError(f"set_precision is torch's: use set_engine to change {self.engine}'s precision")
        for member in self.members.values():
            member.set_precision(precision)

    def set_engine(self, engine: str, precision: str = "fp32", onnx_files: dict[str, Path] | None = None) -> None:
        """Run the members on `engine` in `precision` from now on; fusion and calibration stay as evaluated.

        Args:
            engine: torch, or onnxruntime (over `onnx_files`, one ONNX file per member in that precision).
            precision: torch: fp32/bf16/fp16; onnxruntime: fp32/int8.
            onnx_files: Member name to its ONNX file; needed for onnxruntime.

        Raises:
            ValueError: An unknown engine or precision, or a member without its ONNX file.
        """
        if engine == "torch":
            if self.engine != "torch":  # the torch members are rebuilt from the checkpoints the ensemble was given
                self.members = {m: MemberModel(p, self.device) for m, p in self.checkpoints.items()}
                self.engine = "torch"
            self.set_precision(precision)
            return
        if engine != "onnxruntime":
            raise ValueError(f"unknown engine '{engine}': torch or onnxruntime")
        from dfd.serving.onnx_engine import OnnxMember

        missing = sorted(set(self.members) - set(onnx_files or {}))
        if missing:
            raise ValueError(f"no {precision} ONNX file for members {missing}")
        configs = {m: member.config for m, member in self.members.items()}
        self.members = {m: OnnxMember(onnx_files[m], configs[m], precision)  # type: ignore[index]
                        for m in configs}
        self.engine = engine

    def reference_scores(self, crops: np.ndarray) -> np.ndarray:
        """The calibrated P(fake) of torch fp32, what evaluation scored, whatever this predictor runs now."""
        if self.engine == "torch":
            current = self.precision
            self.set_precision("fp32")
            try:
                return self(crops)
            finally:
                self.set_precision(current)
        exact = EnsemblePredictor(self.checkpoints, self.weights, self.calibration, self.device, self.fusion,
                                  self.post_calibration)
        return exact(crops)

    def precision_error(self, crops: np.ndarray) -> float:
        """Largest |P(fake) now - P(fake) of torch fp32| over `crops`: what another precision or engine costs.

        The gate, the threshold and the calibration were all fitted on torch fp32 scores; this is how far from them
        a bf16/fp16 score, or an ONNX Runtime fp32/int8 one, can be: measured rather than assumed.
        """
        if len(crops) == 0:
            return 0.0
        return float(np.max(np.abs(self(crops) - self.reference_scores(crops))))

    def member_scores(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's P(fake) for RGB uint8 crops (N, H, W, 3)."""
        return {m: model(crops) for m, model in self.members.items()}

    def calibrated(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each fusion member's calibrated P(fake) (its Platt scaling) from its raw P(fake): what fusion takes."""
        return {m: calibrate(np.asarray(scores[m]), self.calibration[m]) for m in self.fusion["members"]}

    def fused(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The fused P(fake) before its calibration, from each member's raw P(fake)."""
        return apply_fusion(self.fusion, np.column_stack(list(self.calibrated(scores).values())))

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The final calibrated P(fake) from each member's raw P(fake): what `tasks.ensemble.fuse` computes."""
        return apply_post_calibration(self.post_calibration, self.fused(scores))

    def score_with_members(self, crops: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The ensemble's P(fake) and each member's calibrated P(fake) for the same crops, from one forward pass of
        each member (what member agreement needs: `dfd.evaluation.agreement`)."""
        if len(crops) == 0:
            return np.zeros(0, dtype=np.float64), {m: np.zeros(0, dtype=np.float64) for m in self.fusion["members"]}
        scores = self.member_scores(crops)
        return self.combine(scores), self.calibrated(scores)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """The ensemble's calibrated P(fake) for RGB uint8 crops (N, H, W, 3)."""
        if len(crops) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.combine(self.member_scores(crops))
