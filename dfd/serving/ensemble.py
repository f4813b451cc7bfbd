"""Scoring face crops with trained members and the fitted ensemble: shared by evaluation and the served model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfd.evaluation.calibration import calibrate
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
    """The weighted average of member models' probabilities.

    Args:
        checkpoints: Member name to its best.pt.
        weights: Member name to its ensemble weight.
        calibration: Member name to its Platt scaling (a, b), applied before averaging; None: raw probabilities.
        device: Torch device for all members.
    """

    def __init__(self, checkpoints: dict[str, Path], weights: dict[str, float],
                 calibration: dict[str, list[float]] | None = None, device: str = "cpu") -> None:
        missing = set(weights) - set(checkpoints)
        if missing:
            raise ValueError(f"no checkpoint for ensemble members {sorted(missing)}")
        self.members = {m: MemberModel(checkpoints[m], device) for m in weights}
        total = sum(weights.values())
        self.weights = {m: w / total for m, w in weights.items()}
        self.calibration = calibration or {m: [1.0, 0.0] for m in weights}

    @classmethod
    def from_spec(cls, spec: dict, checkpoints: dict[str, Path], device: str = "cpu") -> EnsemblePredictor:
        """The ensemble as the ensemble stage fitted it (`ensemble.json`), over the members' checkpoints."""
        return cls(checkpoints, spec["weights"], spec.get("calibration"), device)

    def member_scores(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Each member's P(fake) for RGB uint8 crops (N, H, W, 3)."""
        return {m: model(crops) for m, model in self.members.items()}

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """The ensemble's P(fake) for RGB uint8 crops (N, H, W, 3)."""
        scores = self.member_scores(crops)
        return sum(calibrate(scores[m], self.calibration[m]) * w  # type: ignore[return-value]
                   for m, w in self.weights.items())
