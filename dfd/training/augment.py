"""Augmentations chosen by name in params (`train.augment`), built with albumentations 2.x parameter names.

Every pipeline ends with resize to the model's input size and its normalisation, which come from the model's
registered config (passed in as plain values: this package knows no `models`), so training and serving preprocess
identically.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from dfd.platform.errors import ConfigError


class DctNoise(A.ImageOnlyTransform):
    """Gaussian noise in the upper half of the 2-D DCT spectrum: mimics resampling and compression spectra.

    Args:
        std_range: Noise std range, in pixel units of the orthonormal DCT.
        p: Probability.
    """

    def __init__(self, std_range: tuple[float, float] = (1.0, 4.0), p: float = 0.3) -> None:
        super().__init__(p=p)
        self.std_range = std_range

    def get_params(self) -> dict[str, float]:
        return {"std": float(self.random_generator.uniform(*self.std_range)),
                "seed": int(self.random_generator.integers(2**31))}

    def apply(self, img: np.ndarray, std: float = 1.0, seed: int = 0, **params: object) -> np.ndarray:
        h, w = img.shape[:2]
        he, we = h - h % 2, w - w % 2  # cv2.dct wants even sides
        rng = np.random.default_rng(seed)
        high = (np.add.outer(np.arange(he) / he, np.arange(we) / we) > 0.5).astype(np.float32)
        out = img.astype(np.float32)
        for c in range(out.shape[2]):
            coeffs = cv2.dct(out[:he, :we, c])
            coeffs += rng.normal(0, std, coeffs.shape).astype(np.float32) * high
            out[:he, :we, c] = cv2.idct(coeffs)
        return np.clip(out, 0, 255).astype(img.dtype)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("std_range",)


AUGMENTATIONS: dict[str, Callable[[], A.BasicTransform]] = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "shift_scale_rotate": lambda: A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                                           border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    "color_jitter": lambda: A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
    # Compression and resampling are what deployed fakes go through; training on them buys robustness.
    "jpeg": lambda: A.ImageCompression(compression_type="jpeg", quality_range=(60, 100), p=0.5),
    "webp": lambda: A.ImageCompression(compression_type="webp", quality_range=(60, 100), p=0.3),
    "gauss_noise": lambda: A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
    "gauss_blur": lambda: A.GaussianBlur(blur_limit=(3, 5), p=0.2),
    "downscale": lambda: A.Downscale(scale_range=(0.5, 0.9), p=0.2),
    "dct_noise": lambda: DctNoise(p=0.3),
    "gridmask": lambda: A.GridDropout(ratio=0.3, random_offset=True, p=0.2),
}


def list_augmentations() -> list[str]:
    """Names usable in `train.augment`."""
    return sorted(AUGMENTATIONS)


def build_transform(names: list[str], train: bool, *, input_size: int, mean: tuple[float, float, float],
                    std: tuple[float, float, float]) -> A.Compose:
    """The transform for one model: named augmentations (training only), resize, normalise, to tensor.

    Args:
        names: Augmentation names from params.
        train: Whether to include the augmentations.
        input_size: The model's square input side (its registered config: `ModelConfig.preprocessing()`).
        mean: Per-channel mean (RGB, 0..1 scale).
        std: Per-channel std.
    """
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown augmentation(s) {unknown} in train.augment",
                          f"choose from {', '.join(list_augmentations())}")
    steps = [AUGMENTATIONS[n]() for n in names] if train else []
    steps += [A.Resize(input_size, input_size, interpolation=cv2.INTER_AREA),
              A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, strict=True)
