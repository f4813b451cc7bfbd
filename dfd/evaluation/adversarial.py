"""White-box L-inf attacks (FGSM, PGD) on a differentiable scorer, and the AUC they cost, streamed in batches.

The scorer maps images in [0, 1] (N, 3, H, W) to P(fake) and must be differentiable end to end (each member's
resize, normalisation and network, then the fusion). Post-fusion calibration is monotone, so attacking the fused
probability moves the calibrated one the same way, and the AUC (a ranking metric) is the same on either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from dfd.evaluation.metrics import binary_metrics
from dfd.evaluation.robustness import level_key
from dfd.platform.errors import StageError

Scorer = Callable[[torch.Tensor], torch.Tensor]


def _loss_grad(forward: Scorer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():  # also under a caller's no_grad()
        x = x.detach().requires_grad_(True)
        prob = forward(x).clamp(1e-6, 1 - 1e-6)
        # Sum, not mean: per-image gradients are independent, and the mean would shrink them by the batch size.
        loss = F.binary_cross_entropy(prob, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(forward: Scorer, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size `eps` that raises the loss of the true label (Goodfellow et al., 2015).

    Args:
        forward: Images in [0, 1] (N, 3, H, W) to P(fake) (N,).
        x: Clean images in [0, 1].
        y: Labels as floats (1 = fake).
        eps: L-inf budget in [0, 1] units.
    """
    return (x + eps * _loss_grad(forward, x, y).sign()).clamp(0, 1).detach()


def pgd(forward: Scorer, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent from a random start inside the eps-ball (Madry et al., 2018)."""
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    adv = (x + (noise * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step_size * _loss_grad(forward, adv, y).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1).detach()
    return adv


def adversarial_report(batches: Iterable[tuple[np.ndarray, np.ndarray]], forward: Scorer, attacks: list[str],
                       epsilons: list[float], pgd_steps: int, pgd_step_ratio: float, threshold: float,
                       device: str = "cpu", seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """AUC of the scorer on clean and attacked crops, per attack and epsilon (in 8-bit steps), batch by batch.

    Args:
        batches: (RGB uint8 crops (B, H, W, 3), labels (B,)) pairs.
        forward: The differentiable scorer (see the module docstring).
        attacks: Among "fgsm", "pgd".
        epsilons: Budgets in 8-bit pixel steps (4 means 4/255).
        pgd_steps: PGD iterations.
        pgd_step_ratio: PGD step size as a share of epsilon.
        threshold: Decision threshold for accuracy.
        device: Where the images go.
        seed: Seeds PGD's random start.

    Returns:
        `{"clean": metrics, "fgsm": {eps: metrics + auc_drop}, "pgd": {...}}` (interfaces.md C); the clean AUC is
        the scorer's own, so that each drop compares like with like.
    """
    unknown = set(attacks) - {"fgsm", "pgd"}
    if unknown:
        raise StageError(f"unknown attacks {sorted(unknown)} in evaluate.adversarial.attacks", "use fgsm and/or pgd")
    gen = torch.Generator().manual_seed(seed)
    labels: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    scores: dict[tuple[str, float], list[np.ndarray]] = {(a, e): [] for a in attacks for e in epsilons}
    for images, y in batches:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255).to(device)
        target = torch.as_tensor(y, dtype=torch.float32, device=device)
        labels.append(np.asarray(y))
        with torch.no_grad():
            clean.append(forward(x).float().cpu().numpy())
        for (attack, eps), out in scores.items():
            e = eps / 255
            adv = (fgsm(forward, x, target, e) if attack == "fgsm"
                   else pgd(forward, x, target, e, pgd_steps, e * pgd_step_ratio, gen))
            with torch.no_grad():
                out.append(forward(adv).float().cpu().numpy())
    if not labels:
        raise StageError("no crops to attack", "check the test split of the faces index")
    y_all = np.concatenate(labels)
    base = binary_metrics(y_all, np.concatenate(clean), threshold)
    report: dict[str, dict[str, dict[str, float]]] = {"clean": base}  # type: ignore[dict-item]
    for (attack, eps), out in scores.items():
        m = binary_metrics(y_all, np.concatenate(out), threshold)
        report.setdefault(attack, {})[level_key(eps)] = {**m, "auc_drop": base["auc"] - m["auc"]}
    return report
