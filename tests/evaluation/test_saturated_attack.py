"""Attacks that bite on a confident model: a saturated scorer (logits beyond 20) that the old clamped, probability-
space loss left untouched is moved by FGSM now, and its AUC drops; adversarial crops are scored as 8-bit images on
the calibrated scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfd.evaluation.adversarial import adversarial_report, fgsm, to_uint8_grid
from dfd.evaluation.calibration import apply_post_calibration, fit_post_calibration


def _saturated(x: torch.Tensor) -> torch.Tensor:
    """A confident detector: logit 160 * (mean brightness - 0.5); on the crops below |logit| is 19 to 32."""
    return 160.0 * (x.mean(dim=(1, 2, 3)) - 0.5)


def _crops(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark reals (mean 0.30-0.38) and bright fakes (0.62-0.70), uint8 (N, 16, 16, 3), with a little texture."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    level = np.where(labels == 1, rng.uniform(0.62, 0.70, n), rng.uniform(0.30, 0.38, n))
    noise = rng.integers(-3, 4, (n, 16, 16, 3))
    return np.clip(np.round(level[:, None, None, None] * 255) + noise, 0, 255).astype(np.uint8), labels


def _old_fgsm(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The attack as it was: member logits clamped to +-13.8, probabilities to [1e-6, 1 - 1e-6], BCE on them."""
    x = x.detach().requires_grad_(True)
    prob = torch.sigmoid(_saturated(x).clamp(-13.8, 13.8)).clamp(1e-6, 1 - 1e-6)
    (grad,) = torch.autograd.grad(F.binary_cross_entropy(prob, y, reduction="sum"), x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def test_fgsm_moves_a_saturated_model_that_the_clamped_loss_left_unchanged() -> None:
    crops, labels = _crops()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(labels, dtype=torch.float32)
    assert _saturated(x).abs().min() > 19  # beyond float32 sigmoid's range: the model is saturated everywhere
    eps = 48 / 255
    assert torch.equal(_old_fgsm(x, y, eps), x)  # no gradient through the clamps: nothing moved
    for loss in ("margin", "bce"):
        adv = fgsm(_saturated, x, y, eps, loss=loss)
        assert (adv - x).abs().amax(dim=(1, 2, 3)).min() > 0.9 * eps  # every crop moved by the budget
        towards_wrong = torch.where(y == 1, -1.0, 1.0) * (_saturated(adv) - _saturated(x))
        assert (towards_wrong > 0).all()


def test_the_auc_drops_on_the_calibrated_scale_with_8_bit_crops() -> None:
    crops, labels = _crops()
    # A post-fusion calibration fitted on other crops of the same kind, as ensemble.json holds it.
    fit_crops, fit_labels = _crops(seed=1)
    with torch.no_grad():
        fit_z = _saturated(torch.from_numpy(fit_crops).permute(0, 3, 1, 2).float() / 255).double().numpy()
    post = fit_post_calibration("platt", 1 / (1 + np.exp(-fit_z)), fit_labels)
    batches = [(crops[i:i + 16], labels[i:i + 16]) for i in range(0, len(crops), 16)]
    report = adversarial_report(batches, _saturated, ["fgsm", "pgd"], [48.0], pgd_steps=3, pgd_step_ratio=0.5,
                                threshold=0.5, calibrate=lambda p: apply_post_calibration(post, p))
    assert report["clean"]["auc"] == pytest.approx(1.0) and report["clean"]["accuracy"] == pytest.approx(1.0)
    for attack in ("fgsm", "pgd"):
        hit = report[attack]["48"]
        assert hit["auc"] < 0.4 and hit["auc_drop"] > 0.6 and hit["accuracy"] < 0.5  # worse than a coin
    # 8-bit rounding: what is scored is an image the served model could receive.
    x = torch.rand(2, 3, 4, 4)
    grid = to_uint8_grid(x) * 255
    assert torch.equal(grid, grid.round()) and (grid - x * 255).abs().max() <= 0.5 + 1e-4
    with pytest.raises(Exception, match="unknown attack loss"):
        adversarial_report(batches, _saturated, ["fgsm"], [1.0], 1, 0.5, 0.5, loss="hinge")
