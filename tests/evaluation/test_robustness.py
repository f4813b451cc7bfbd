"""Perturbations at levels: each changes the crop, harsher levels more; failures are loud; scoring is streamed."""

from __future__ import annotations

import numpy as np
import pytest

from dfd.evaluation import robustness as rb
from dfd.evaluation.metrics import binary_metrics
from dfd.platform.errors import ConfigError

LEVELS = {"jpeg": [90, 70, 50, 30], "gauss_noise": [4, 8, 16], "gauss_blur": [0.5, 1.0, 2.0],
          "brightness": [20, 40, 60], "contrast": [0.8, 0.6, 0.4], "downscale": [0.75, 0.5, 0.25],
          "salt_pepper": [0.01, 0.05]}


def _crops(n: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus texture: JPEG, blur and downscale all have something to remove."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1).astype(float) + 60
    return np.stack([np.clip(base + rng.normal(0, 20, base.shape), 0, 255) for _ in range(n)]).astype(np.uint8)


def test_the_defaults_cover_every_registered_perturbation() -> None:
    from dfd.platform.config import EvaluateParams

    assert set(EvaluateParams().robustness) == set(rb.PERTURBATIONS) == set(LEVELS)


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_every_level_changes_the_crop_and_harsher_levels_change_it_more(name: str) -> None:
    crops = _crops()
    levels = sorted(LEVELS[name], key=rb.PERTURBATIONS[name].strength)
    change = []
    for level in levels:
        out = rb.perturb(crops, name, level, np.random.default_rng(0))
        assert out.shape == crops.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(float) - crops).mean()
        assert diff > 0, f"{name} at {level} left the crops unchanged"
        change.append(diff)
    shown = dict(zip(levels, change, strict=True))
    assert change == sorted(change) and len(set(change)) == len(change), f"{name}: {shown}"


def test_salt_pepper_flips_exactly_its_share_to_black_or_white_and_is_seeded() -> None:
    crops = np.full((4, 40, 50, 3), 128, np.uint8)  # mid grey: every flipped pixel shows
    out = rb.perturb(crops, "salt_pepper", 0.05, np.random.default_rng(7))
    changed = (out != crops).any(-1)  # (N, H, W)
    assert changed.sum(axis=(1, 2)).tolist() == [int(40 * 50 * 0.05)] * 4  # exactly the share, per crop
    flipped = out[changed]  # (K, 3): the same mask on every channel, each pixel all black or all white
    assert set(map(tuple, flipped.tolist())) == {(0, 0, 0), (255, 255, 255)}
    assert 0.3 < (flipped[:, 0] == 255).mean() < 0.7  # salt and pepper about half each
    assert not (changed[0] == changed[1]).all()  # each crop its own mask
    again = rb.perturb(crops, "salt_pepper", 0.05, np.random.default_rng(7))
    other = rb.perturb(crops, "salt_pepper", 0.05, np.random.default_rng(8))
    assert (again == out).all() and not (other == out).all()


def test_a_failed_jpeg_encode_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rb.cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(rb.PerturbationError, match="JPEG encoding at quality 50 failed"):
        rb.perturb(_crops(1), "jpeg", 50, np.random.default_rng(0))


@pytest.mark.parametrize(("spec", "match"), [({"jpg": [50]}, "unknown robustness perturbation 'jpg'"),
                                             ({"jpeg": [0, 50]}, r"levels \[0\] are invalid"),
                                             ({"downscale": [2]}, r"levels \[2\] are invalid"),
                                             ({"salt_pepper": [0, 1.5]}, r"levels \[0, 1.5\] are invalid")])
def test_bad_names_and_levels_are_config_errors(spec: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        rb.check_robustness(spec)


def test_streaming_scores_more_crops_than_one_batch_with_bounded_batches() -> None:
    n, batch = 23, 4
    crops = _crops(n, size=32, seed=1)
    labels = np.arange(n) % 2
    seen: list[int] = []

    def score(x: np.ndarray) -> np.ndarray:  # a brightness-sensitive "model": brighter = more fake
        seen.append(len(x))
        return x.reshape(len(x), -1).mean(1) / 255

    # Fakes brighter than reals: the clean AUC is 1, and adding brightness to everything keeps the order.
    crops[labels == 1] = np.clip(crops[labels == 1].astype(int) + 40, 0, 255).astype(np.uint8)
    batches = ((crops[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch))
    spec = {"jpeg": [70], "contrast": [0.6, 0.0]}
    out = rb.robustness_report(batches, score, spec, threshold=0.5)
    assert out["crops"] == n and max(seen) <= batch and sum(seen) == n * 4  # clean + three levels
    assert out["clean"]["auc"] == pytest.approx(binary_metrics(labels, score(crops))["auc"])
    assert set(out["perturbed"]) == {"jpeg", "contrast"} and set(out["perturbed"]["contrast"]) == {"0.6", "0"}
    flat = out["perturbed"]["contrast"]["0"]  # contrast 0: every crop its own mean, order kept by brightness
    assert flat["auc_drop"] == pytest.approx(out["clean"]["auc"] - flat["auc"])


def test_robustness_plot_draws_one_line_per_perturbation(tmp_path) -> None:
    report = {"clean": {"auc": 0.9}, "perturbed": {"jpeg": {"90": {"auc": 0.85}, "30": {"auc": 0.6}},
                                                   "gauss_blur": {"1": {"auc": 0.7}}}}
    path = rb.robustness_plot(report, tmp_path / "r.png")
    assert path.stat().st_size > 1000
