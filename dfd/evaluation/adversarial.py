"""White-box L-inf attacks (FGSM, PGD) on a differentiable scorer, and the AUC they cost, streamed in batches.

The scorer maps images in [0, 1] (N, 3, H, W) to the LOGIT of the fused P(fake), differentiable end to end and
unclamped (see `DifferentiableEnsemble.fused_logit`): the loss is computed from logits, so a saturated model still
hands the attack a gradient. Attacked crops are rounded to 8 bits (the served model takes uint8 only), then scored
on the final scale: sigmoid, then the post-fusion calibration, judged at the evaluated threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from dfd.evaluation.metrics import binary_metrics
from dfd.evaluation.robustness import level_key
from dfd.platform.errors import StageError

Scorer = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] (N, 3, H, W) -> fused logit (N,)
LOSSES = ("margin", "bce")


def _loss_grad(forward: Scorer, x: torch.Tensor, y: torch.Tensor, loss: str = "margin") -> torch.Tensor:
    """The gradient of the attack loss (raised by the attack) with respect to the pixels.

    margin: the logit pushed towards the wrong class, (1 - 2y) * z: its gradient is the logit's own and never
    vanishes. bce: binary cross-entropy with logits, in float64, where sigmoid saturates near a logit of 37 rather
    than float32's 17.
    """
    with torch.enable_grad():  # also under a caller's no_grad()
        x = x.detach().requires_grad_(True)
        z = forward(x).double()
        target = y.double()
        # Sum, not mean: per-image gradients are independent, and the mean would shrink them by the batch size.
        value = (((1 - 2 * target) * z).sum() if loss == "margin"
                 else F.binary_cross_entropy_with_logits(z, target, reduction="sum"))
        (grad,) = torch.autograd.grad(value, x)
    return grad


def to_uint8_grid(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] rounded to the nearest 8-bit level: what a saved, then served, adversarial image holds."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def fgsm(forward: Scorer, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "margin") -> torch.Tensor:
    """One signed-gradient step of size `eps` that raises the loss of the true label (Goodfellow et al., 2015).

    Args:
        forward: Images in [0, 1] (N, 3, H, W) to the fused logit (N,).
        x: Clean images in [0, 1].
        y: Labels as floats (1 = fake).
        eps: L-inf budget in [0, 1] units.
        loss: "margin" or "bce" (see `_loss_grad`).
    """
    return (x + eps * _loss_grad(forward, x, y, loss).sign()).clamp(0, 1).detach()


def pgd(forward: Scorer, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        generator: torch.Generator | None = None, loss: str = "margin") -> torch.Tensor:
    """Projected gradient descent from a random start inside the eps-ball (Madry et al., 2018)."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    adv = (x + (noise * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step_size * _loss_grad(forward, adv, y, loss).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def adversarial_report(batches: Iterable[tuple[np.ndarray, np.ndarray]], forward: Scorer, attacks: list[str],
                       epsilons: list[float], pgd_steps: int, pgd_step_ratio: float, threshold: float,
                       device: str = "cpu", seed: int = 0,
                       calibrate: Callable[[np.ndarray], np.ndarray] | None = None,
                       loss: str = "margin") -> dict[str, dict[str, dict[str, float]]]:
    """Metrics of the scorer on clean and attacked crops, per attack and epsilon (in 8-bit steps), batch by batch.

    Args:
        batches: (RGB uint8 crops (B, H, W, 3), labels (B,)) pairs.
        forward: The differentiable scorer: images to the fused logit (see the module docstring).
        attacks: Among "fgsm", "pgd".
        epsilons: Budgets in 8-bit pixel steps (4 means 4/255).
        pgd_steps: PGD iterations.
        pgd_step_ratio: PGD step size as a share of epsilon.
        threshold: The evaluated decision threshold (on the calibrated scale).
        device: Where the images go.
        seed: Seeds PGD's random start.
        calibrate: Fused P(fake) to the served, calibrated P(fake) (the post-fusion calibration); None: identity.
        loss: The attack loss, "margin" or "bce".

    Returns:
        `{"clean": metrics, "fgsm": {eps: metrics + auc_drop}, "pgd": {...}}` (interfaces.md C), every metric on the
        calibrated scale; the clean AUC is the scorer's own, so that each drop compares like with like.
    """
    unknown = set(attacks) - {"fgsm", "pgd"}
    if unknown:
        raise StageError(f"unknown attacks {sorted(unknown)} in evaluate.adversarial.attacks", "use fgsm and/or pgd")
    if loss not in LOSSES:
        raise StageError(f"unknown attack loss '{loss}'", f"use one of {', '.join(LOSSES)}")
    final = calibrate or (lambda p: p)

    def scored(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            z = forward(x).double().cpu().numpy()
        return np.asarray(final(1 / (1 + np.exp(-z))), dtype=float)  # float64: no saturation before calibration

    gen = torch.Generator().manual_seed(seed)
    labels: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    scores: dict[tuple[str, float], list[np.ndarray]] = {(a, e): [] for a in attacks for e in epsilons}
    for images, y in batches:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).to(device)
        target = torch.as_tensor(y, dtype=torch.float32, device=device)
        labels.append(np.asarray(y))
        clean.append(scored(x))
        for (attack, eps), out in scores.items():
            e = eps / 255
            adv = (fgsm(forward, x, target, e, loss) if attack == "fgsm"
                   else pgd(forward, x, target, e, pgd_steps, e * pgd_step_ratio, gen, loss))
            out.append(scored(to_uint8_grid(adv)))
    if not labels:
        raise StageError("no crops to attack", "check the test split of the faces index")
    y_all = np.concatenate(labels)
    base = binary_metrics(y_all, np.concatenate(clean), threshold)
    report: dict[str, dict[str, dict[str, float]]] = {"clean": base}  # type: ignore[dict-item]
    for (attack, eps), out in scores.items():
        m = binary_metrics(y_all, np.concatenate(out), threshold)
        report.setdefault(attack, {})[level_key(eps)] = {**m, "auc_drop": base["auc"] - m["auc"]}
    return report
