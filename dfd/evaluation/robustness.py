"""Perturbations of test crops at several levels, and the ensemble's metrics under each (streamed in batches).

Each perturbation is registered by name with the range its level must lie in and a `strength` that orders levels
from mild to harsh (JPEG quality 90 is milder than 30; a contrast factor of 0.8 milder than 0.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from dfd.evaluation.metrics import binary_metrics
from dfd.platform.errors import ConfigError, StageError


class PerturbationError(StageError):
    """A perturbation could not be applied (an encoder failed): never fall back to the clean image."""


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: `apply(rgb, level, rng)` on an RGB uint8 crop, its valid levels and their strength."""

    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    valid: Callable[[float], bool]
    valid_text: str
    strength: Callable[[float], float]


def _jpeg(rgb: np.ndarray, quality: float, _: np.random.Generator) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise PerturbationError(f"JPEG encoding at quality {int(quality)} failed for a {rgb.shape} crop",
                                "check the OpenCV build (cv2.imencode('.jpg', ...))")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0.0, sigma, rgb.shape), 0, 255).astype(np.uint8)


def _blur(rgb: np.ndarray, sigma: float, _: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma)  # kernel size from sigma (about 6 sigma wide)


def _brightness(rgb: np.ndarray, delta: float, _: np.random.Generator) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) + delta, 0, 255).astype(np.uint8)


def _contrast(rgb: np.ndarray, factor: float, _: np.random.Generator) -> np.ndarray:
    x = rgb.astype(np.float32)
    return np.clip((x - x.mean()) * factor + x.mean(), 0, 255).round().astype(np.uint8)


def _downscale(rgb: np.ndarray, factor: float, _: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _salt_pepper(rgb: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    # albumentations' impulse noise: exactly floor(H*W*share) pixels, half white and half black, the same mask on
    # every channel (a stuck or dead sensor pixel); seeded from `rng` so that runs compare.
    t = A.SaltAndPepper(amount=(share, share), salt_vs_pepper=(0.5, 0.5), p=1.0)
    t.set_random_seed(int(rng.integers(2**32)))
    return t(image=rgb)["image"]


PERTURBATIONS: dict[str, Perturbation] = {
    "jpeg": Perturbation(_jpeg, lambda q: 1 <= q <= 100, "a JPEG quality in 1..100", lambda q: 100 - q),
    "gauss_noise": Perturbation(_noise, lambda s: s > 0, "a noise sigma > 0 (8-bit steps)", lambda s: s),
    "gauss_blur": Perturbation(_blur, lambda s: s > 0, "a blur sigma > 0 (pixels)", lambda s: s),
    "brightness": Perturbation(_brightness, lambda d: d != 0 and abs(d) < 255, "an offset in -254..254, not 0",
                               abs),
    "contrast": Perturbation(_contrast, lambda f: 0 <= f < 1, "a factor in [0, 1) (lower is harsher)",
                             lambda f: 1 - f),
    "downscale": Perturbation(_downscale, lambda f: 0 < f < 1, "a side factor in (0, 1)", lambda f: 1 / f),
    "salt_pepper": Perturbation(_salt_pepper, lambda a: 0 < a <= 1, "a share of pixels flipped in (0, 1]",
                                lambda a: a),
}


def level_key(level: float) -> str:
    """A level as a JSON key: 50 -> "50", 0.5 -> "0.5"."""
    return str(int(level)) if float(level).is_integer() else repr(float(level))


def get_perturbation(name: str) -> Perturbation:
    """A perturbation by its params name (a ConfigError naming the choices for an unknown one)."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown robustness perturbation '{name}' in evaluate.robustness",
                          f"choose from {', '.join(sorted(PERTURBATIONS))}")
    return PERTURBATIONS[name]


def check_robustness(spec: dict[str, list[float]]) -> None:
    """Reject unknown perturbation names and out-of-range levels (`evaluate.robustness`), naming the fix.

    An empty list of levels turns a perturbation off (override files merge into the defaults, so they cannot drop
    a key).
    """
    for name, levels in spec.items():
        p = get_perturbation(name)
        bad = [lv for lv in levels if not p.valid(lv)]
        if bad:
            raise ConfigError(f"evaluate.robustness.{name}: levels {bad} are invalid", f"give each {p.valid_text}")


def perturb(batch: np.ndarray, name: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """A perturbed copy of a batch of RGB uint8 crops (N, H, W, 3): same shape and dtype."""
    p = PERTURBATIONS[name]
    return np.stack([p.apply(c, level, rng) for c in batch]) if len(batch) else batch.copy()


def robustness_report(batches: Iterable[tuple[np.ndarray, np.ndarray]], score: Callable[[np.ndarray], np.ndarray],
                      spec: dict[str, list[float]], threshold: float, seed: int = 0) -> dict[str, Any]:
    """Score crops clean and under every perturbation level, one batch at a time.

    Only one batch and one perturbed copy of it are in memory at once; the scores are kept (a float per crop and
    level) and the metrics computed at the end.

    Args:
        batches: (RGB uint8 crops (B, H, W, 3), labels (B,)) pairs.
        score: Crops to the ensemble's P(fake).
        spec: Perturbation name to its levels.
        threshold: Decision threshold for accuracy.
        seed: Seeds the noise, so that runs compare.

    Returns:
        `{"crops", "clean": metrics, "perturbed": {name: {level: metrics + auc_drop}}}` (interfaces.md C).
    """
    check_robustness(spec)
    labels: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    scores: dict[tuple[str, float], list[np.ndarray]] = {(n, lv): [] for n, levels in spec.items() for lv in levels}
    rngs = {key: np.random.default_rng([seed, i]) for i, key in enumerate(scores)}
    for images, y in batches:
        labels.append(np.asarray(y))
        clean.append(np.asarray(score(images)))
        for (name, level), out in scores.items():
            out.append(np.asarray(score(perturb(images, name, level, rngs[name, level]))))
    if not labels:
        raise StageError("no crops to score for robustness", "check the test split of the faces index")
    y_all = np.concatenate(labels)
    base = binary_metrics(y_all, np.concatenate(clean), threshold)
    perturbed: dict[str, dict[str, Any]] = {}
    for (name, level), out in scores.items():
        m = binary_metrics(y_all, np.concatenate(out), threshold)
        m["auc_drop"] = base["auc"] - m["auc"]
        perturbed.setdefault(name, {})[level_key(level)] = m
    return {"crops": len(y_all), "clean": base, "perturbed": perturbed}


def robustness_plot(report: dict[str, Any], path: Path) -> Path:
    """AUC per level, one line per perturbation: x is the level's rank from clean (0) to harshest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    clean = report["clean"]["auc"]
    longest = 0
    for name, levels in report.get("perturbed", {}).items():
        keys = sorted(levels, key=lambda k: PERTURBATIONS[name].strength(float(k)))
        longest = max(longest, len(keys))
        ax.plot(range(len(keys) + 1), [clean, *(levels[k]["auc"] for k in keys)], "o-",
                label=f"{name} ({', '.join(keys)})")
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set(xticks=range(longest + 1), xticklabels=["clean", *(str(i) for i in range(1, longest + 1))],
           xlabel="level, mild to harsh (values in the legend)", ylabel="AUC", ylim=(0, 1.02),
           title="Ensemble AUC under perturbations of the test crops")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
