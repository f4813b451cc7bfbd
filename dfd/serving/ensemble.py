"""Scoring face crops with trained members and the fitted ensemble: shared by evaluation and the served model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfd.evaluation.calibration import apply_post_calibration, calibrate
from dfd.evaluation.fusion import apply_fusion
from dfd.training.augment import build_transform
from models.checkpoint import build_from_checkpoint, load_checkpoint


class MemberModel:
    """One trained detector with its own preprocessing (input size, normalisation) from its checkpoint."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        ckpt = load_checkpoint(checkpoint)
        self.config = ckpt["model_config"]  # the registered preprocessing, saved beside the weights
        self.device = torch.device(device)
        self.model = build_from_checkpoint(ckpt).to(self.device)
        self.transform = build_transform([], train=False, input_size=self.config["input_size"],
                                         mean=tuple(self.config["mean"]), std=tuple(self.config["std"]))

    @torch.no_grad()
    def __call__(self, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """P(fake) for RGB uint8 crops of shape (N, H, W, 3)."""
        out = []
        for i in range(0, len(crops), batch_size):
            x = torch.stack([self.transform(image=c)["image"] for c in crops[i:i + batch_size]]).to(self.device)
            out.append(torch.sigmoid(self.model(x).float().squeeze(1)).cpu().numpy())
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
    """

    def __init__(self, checkpoints: dict[str, Path], weights: dict[str, float],
                 calibration: dict[str, list[float]] | None = None, device: str = "cpu",
                 fusion: dict[str, Any] | None = None, post_calibration: dict[str, Any] | None = None) -> None:
        names = list(fusion["members"]) if fusion else list(weights)
        missing = set(names) - set(checkpoints)
        if missing:
            raise ValueError(f"no checkpoint for ensemble members {sorted(missing)}")
        self.members = {m: MemberModel(checkpoints[m], device) for m in names}
        total = sum(weights.values()) or 1.0  # stacking's signed shares may sum to 0; they only inform then
        self.weights = {m: w / total for m, w in weights.items()}
        self.calibration = calibration or {m: [1.0, 0.0] for m in names}
        self.fusion = fusion or {"method": "weighted_average", "members": names, "weights": self.weights}
        self.post_calibration = post_calibration

    @classmethod
    def from_spec(cls, spec: dict, checkpoints: dict[str, Path], device: str = "cpu") -> EnsemblePredictor:
        """The ensemble as the ensemble stage fitted it (`ensemble.json`), over the members' checkpoints."""
        return cls(checkpoints, spec["weights"], spec.get("calibration"), device, spec.get("fusion"),
                   spec.get("post_calibration"))

    def member_scores(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's P(fake) for RGB uint8 crops (N, H, W, 3)."""
        return {m: model(crops) for m, model in self.members.items()}

    def combine(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The final calibrated P(fake) from each member's raw P(fake): what `tasks.ensemble.fuse` computes."""
        X = np.column_stack([calibrate(np.asarray(scores[m]), self.calibration[m]) for m in self.fusion["members"]])
        return apply_post_calibration(self.post_calibration, apply_fusion(self.fusion, X))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """The ensemble's calibrated P(fake) for RGB uint8 crops (N, H, W, 3)."""
        if len(crops) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.combine(self.member_scores(crops))
