"""Landmark-based augmentations, applied to a face crop before the albumentations pipeline.

- Self-Blended Images (Shiohara and Yamasaki, CVPR 2022): a real face blended into a slightly transformed copy of
  itself through a blurred, deformed landmark-hull mask becomes a pseudo-fake (label 1), with the blending boundary
  and statistical inconsistencies of a face swap but no identity change. A dataset of real videos alone trains.
- Landmark cut-out (the DFDC winner's part dropout): blank the eyes, the nose or the mouth, so the model cannot rely
  on one region.
"""

from __future__ import annotations

import cv2
import numpy as np

#: iBUG 68-point index ranges of the face parts the cut-out hides.
PARTS = {"eyes": list(range(36, 48)), "nose": list(range(27, 36)), "mouth": list(range(48, 68))}


def hull_mask(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """A float32 mask (H, W) that is 1 inside the convex hull of `points` (N, 2)."""
    mask = np.zeros(shape, np.float32)
    cv2.fillConvexPoly(mask, cv2.convexHull(points.astype(np.int32)), 1.0)
    return mask


def _deform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly grow or shrink the hull and blur its edge, as SBI's mask generator does."""
    h, w = mask.shape
    k = max(3, int(min(h, w) * rng.uniform(0.02, 0.08)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.dilate(mask, kernel) if rng.random() < 0.5 else cv2.erode(mask, kernel)
    sigma = min(h, w) * rng.uniform(0.01, 0.04)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _source_transform(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SBI's source-target generator: colour and frequency changes, then a small shift and rescale."""
    img = rgb.astype(np.float32)
    img = img * rng.uniform(0.9, 1.1, 3) + rng.uniform(-12, 12, 3)  # per-channel colour shift
    if rng.random() < 0.5:  # frequency: resample (blur) or sharpen
        h, w = img.shape[:2]
        f = rng.uniform(0.4, 0.8)
        img = cv2.resize(cv2.resize(img, (max(1, int(w * f)), max(1, int(h * f)))), (w, h))
    else:
        img = cv2.addWeighted(img, 1.5, cv2.GaussianBlur(img, (0, 0), 1.0), -0.5, 0)
    h, w = img.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, 2) * (w, h)
    m = np.array([[scale, 0, (1 - scale) * w / 2 + shift[0]], [0, scale, (1 - scale) * h / 2 + shift[1]]], np.float32)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(img, 0, 255)


def self_blend(rgb: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Self-Blended Image of a real face crop.

    Args:
        rgb: RGB uint8 crop (H, W, 3).
        landmarks: 68 points (68, 2) in crop pixels.
        rng: Random generator.

    Returns:
        The pseudo-fake (uint8, same shape), and the blend mask (float32 (H, W), 0 where the input is unchanged).
    """
    mask = _deform(hull_mask(rgb.shape[:2], landmarks), rng)
    mask *= rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])  # blend ratio: sometimes a partial blend
    mask[mask < 1e-3] = 0.0  # cut the Gaussian's far tails: outside the blurred hull the face stays untouched
    source = _source_transform(rgb, rng)
    out = source * mask[..., None] + rgb.astype(np.float32) * (1 - mask[..., None])
    out = np.where(mask[..., None] > 0, np.clip(np.rint(out), 0, 255), rgb)
    return out.astype(np.uint8), mask


def landmark_cutout(rgb: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blank one face part (eyes, nose or mouth), chosen at random, with a dilated hull of its landmarks."""
    part = PARTS[str(rng.choice(list(PARTS)))]
    mask = hull_mask(rgb.shape[:2], landmarks[part])
    k = max(3, int(min(rgb.shape[:2]) * 0.06) | 1)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    out = rgb.copy()
    out[mask > 0] = 0
    return out

