"""Perturbations applied to test crops to measure how the ensemble degrades (compression, blur, resampling, noise)."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from dfd.platform.errors import ConfigError


def _jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(rgb: np.ndarray) -> np.ndarray:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) if ok else rgb
    return apply


def _downscale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, int(w * factor)), max(1, int(h * factor))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return apply


def _noise(rgb: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)  # fixed: the same noise for every run, so results compare
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg_50": _jpeg(50),
    "jpeg_30": _jpeg(30),
    "gauss_blur": lambda rgb: cv2.GaussianBlur(rgb, (5, 5), 1.5),
    "downscale_50": _downscale(0.5),
    "gauss_noise": _noise,
}


def get_perturbation(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """A perturbation by its params name."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown robustness perturbation '{name}' in evaluate.robustness",
                          f"choose from {', '.join(sorted(PERTURBATIONS))}")
    return PERTURBATIONS[name]
