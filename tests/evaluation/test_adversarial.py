"""White-box attacks on the tiny trained ensemble: the differentiable path matches serving, and FGSM/PGD cost AUC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dfd.evaluation.adversarial import adversarial_report, fgsm, pgd
from dfd.evaluation.crops import iter_crop_batches
from dfd.platform.errors import StageError
from dfd.platform.layout import Layout
from dfd.serving.differentiable import DifferentiableEnsemble, penultimate_embedder
from dfd.serving.ensemble import EnsemblePredictor
from tests.helpers import tiny_params


@pytest.fixture(scope="module")
def members(trained_project: Path) -> tuple[dict, dict[str, Path], np.ndarray, np.ndarray]:
    """The trained ensemble's spec and checkpoints, and its test crops with labels (read only)."""
    layout = Layout.from_params(tiny_params(trained_project), trained_project)
    spec = json.loads((layout.ensemble_dir / "ensemble.json").read_text())
    checkpoints = {m: layout.model_dir(m) / "best.pt" for m in spec["members"]}
    index = pd.read_parquet(layout.faces_index)
    test = index[index["split"] == "test"]
    crops, labels = zip(*iter_crop_batches([layout.faces_index.parent / c for c in test["crop"]],
                                           test["label"].tolist(), 10_000), strict=True)
    return spec, checkpoints, crops[0], labels[0]


def test_the_differentiable_ensemble_scores_as_the_served_one(members: tuple) -> None:
    spec, checkpoints, crops, _ = members
    served = EnsemblePredictor.from_spec(spec, checkpoints)(crops)
    forward = DifferentiableEnsemble(spec, checkpoints)
    with torch.no_grad():
        ours = forward(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255).numpy()
    # The served path resizes with OpenCV on uint8, ours with torch on floats: equal up to rounding.
    assert np.abs(ours - served).max() < 0.02


def test_fgsm_and_pgd_cost_more_auc_than_random_noise_of_the_same_size(members: tuple) -> None:
    """An attack is judged against what any perturbation of its size costs: random +-eps per pixel (the corner of the
    same L-inf ball the attack searches) must lose much less AUC than FGSM and PGD do."""
    from sklearn.metrics import roc_auc_score

    spec, checkpoints, crops, labels = members
    forward = DifferentiableEnsemble(spec, checkpoints).fused_logit
    batches = [(crops[i:i + 8], labels[i:i + 8]) for i in range(0, len(crops), 8)]  # several batches
    eps = 16.0
    report = adversarial_report(batches, forward, ["fgsm", "pgd"], [2.0, eps], pgd_steps=3, pgd_step_ratio=0.5,
                                threshold=0.5)
    clean = report["clean"]["auc"]
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the raw fused logit: its AUC is the served one's unless a calibration ties scores
        clean_raw = roc_auc_score(labels, forward(x).double().numpy())
    random_drops = []
    for _ in range(5):  # five draws of random signs: the noise's own spread
        signs = torch.randint(0, 2, x.shape, generator=gen).float() * 2 - 1
        with torch.no_grad():
            noisy = forward((x + signs * eps / 255).clamp(0, 1)).double().numpy()
        random_drops.append(clean_raw - roc_auc_score(labels, noisy))
    for attack in ("fgsm", "pgd"):
        strong = report[attack][str(int(eps))]
        assert strong["auc_drop"] == pytest.approx(clean - strong["auc"])
        # The attack pushes every score towards the wrong class; random signs mostly cancel out.
        assert strong["auc_drop"] > max(random_drops) + 0.1, (attack, strong["auc_drop"], random_drops)
        assert report[attack]["2"]["auc"] >= strong["auc"] - 1e-9  # a larger budget costs at least as much


def test_attacks_stay_inside_the_budget_and_the_image_range(members: tuple) -> None:
    spec, checkpoints, crops, labels = members
    forward = DifferentiableEnsemble(spec, checkpoints)
    x = torch.from_numpy(crops[:6]).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(labels[:6], dtype=torch.float32)
    eps = 4 / 255
    logit = forward.fused_logit
    for adv in (fgsm(logit, x, y, eps), pgd(logit, x, y, eps, steps=2, step_size=eps / 2),
                fgsm(logit, x, y, eps, loss="bce")):
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)
    # FGSM moves each crop's score towards the wrong class.
    with torch.no_grad():
        before, after = forward(x), forward(fgsm(logit, x, y, eps))
    sign = torch.where(y == 1, -1.0, 1.0)
    assert ((after - before) * sign >= -1e-6).float().mean() > 0.8


def test_penultimate_embeddings_have_the_head_width(members: tuple) -> None:
    _, checkpoints, crops, _ = members
    emb = penultimate_embedder(checkpoints["mesonet"])(crops[:5])
    assert emb.shape == (5, 16) and np.isfinite(emb).all()  # MesoNet's 16-unit hidden layer
    assert np.abs(emb[0] - emb[1:]).max() > 0  # features of different crops differ


@pytest.mark.parametrize("method", ["weighted_average", "stacking", "confidence", "attention"])
def test_every_fusion_has_a_differentiable_form_that_matches_numpy(members: tuple, method: str) -> None:
    """The fusion formula, checked on the same member logits: the members' own inputs differ between the torch and
    OpenCV resizes (the test above bounds that), and a stacking with coefficients up to 4.5 would multiply that
    difference by their sum, so it is kept out of this comparison."""
    from dfd.evaluation.attention import apply_attention
    from dfd.evaluation.calibration import logit

    spec, checkpoints, crops, _ = members
    names = list(spec["members"])
    k = len(names)
    gate = np.random.default_rng(0).normal(0, 1, (k, k))  # a gate that moves with every member's logit
    params = {"weighted_average": {"weights": {m: i + 1.0 for i, m in enumerate(names)}},
              "stacking": {"coef": {m: (-1.0) ** i * (i + 0.5) for i, m in enumerate(names)}, "intercept": 0.3},
              "confidence": {"eps": 1e-3},
              "attention": {"W": gate.tolist(), "b": np.linspace(-0.5, 0.5, k).tolist(), "mu": [0.2] * k,
                            "sd": [1.5] * k}}[method]
    fused_spec = {**spec, "fusion": {"method": method, "members": names, **params}}
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    ensemble = DifferentiableEnsemble(fused_spec, checkpoints)
    with torch.no_grad():
        z = {m: ensemble.members[m](x).double().numpy() for m in names}  # each member's logit
    X = np.column_stack([1 / (1 + np.exp(-(spec["calibration"][m][0] * z[m] + spec["calibration"][m][1])))
                         for m in names])
    if method == "weighted_average":
        w = np.array([params["weights"][m] for m in names])
        expected = X @ (w / w.sum())
    elif method == "stacking":
        expected = 1 / (1 + np.exp(-(logit(X) @ np.array([params["coef"][m] for m in names]) + 0.3)))
    elif method == "attention":
        expected = apply_attention(params, X)
    else:
        w = np.abs(X - 0.5) + 1e-3
        expected = (w * X).sum(1) / w.sum(1)
    with torch.no_grad():
        ours = ensemble(x).double().numpy()
    assert np.abs(ours - expected).max() < 1e-4  # float32 against float64 arithmetic
    with pytest.raises(StageError, match="no differentiable form of the 'median' fusion"):
        DifferentiableEnsemble({**spec, "fusion": {"method": "median", "members": names}}, checkpoints)


def test_a_saturated_ensemble_still_gives_the_attack_a_gradient(members: tuple) -> None:
    """One member with its last layer scaled until every logit is beyond 20: the old clamp at 13.8 gave FGSM a zero
    gradient; the unclamped fused logit moves every crop towards the wrong class."""
    spec, checkpoints, crops, labels = members
    name = spec["members"][0]
    one = {**spec, "members": [name], "weights": {name: 1.0}, "calibration": {name: [1.0, 0.0]},
           "fusion": {"method": "weighted_average", "members": [name], "weights": {name: 1.0}}}
    ens = DifferentiableEnsemble(one, {name: checkpoints[name]})
    x = torch.from_numpy(crops[:8]).permute(0, 3, 1, 2).float() / 255
    y = torch.as_tensor(labels[:8], dtype=torch.float32)
    last = [m for m in ens.members[name].net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = 25.0 / float(ens.fused_logit(x).abs().min())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
        z = ens.fused_logit(x)
    assert z.abs().min() > 20  # every crop beyond the old clamp at 13.8
    x_req = x.clone().requires_grad_(True)
    clamped = torch.sigmoid(ens.members[name](x_req).clamp(-13.8, 13.8))  # the old attack path
    (old_grad,) = torch.autograd.grad(clamped.sum(), x_req)
    assert torch.count_nonzero(old_grad) == 0
    adv = fgsm(ens.fused_logit, x, y, 4 / 255)
    assert (adv - x).abs().amax(dim=(1, 2, 3)).min() > 0  # every crop moved
    with torch.no_grad():
        moved = torch.where(y == 1, -1.0, 1.0) * (ens.fused_logit(adv) - z)
    assert (moved > 0).float().mean() >= 0.75


def test_the_fitted_range_clip_matches_numpy_and_keeps_the_gradient(members: tuple) -> None:
    """With `member_range` narrower than the crops' scores, the torch fusion clips as numpy does (value), while the
    gradient still reaches the pixels of a clipped crop (straight through)."""
    from dfd.evaluation.calibration import calibrate, logit
    from dfd.evaluation.fusion import apply_fusion

    spec, checkpoints, crops, _ = members
    names = list(spec["members"])
    raw = EnsemblePredictor.from_spec(spec, checkpoints).member_scores(crops)
    X = np.column_stack([calibrate(raw[m], spec["calibration"][m]) for m in names])
    ranges = {m: [float(np.quantile(X[:, j], 0.3)), float(np.quantile(X[:, j], 0.7))] for j, m in enumerate(names)}
    coef = {m: 0.5 for m in names}  # centred, so that the fused score is not saturated either way
    fusion = {"method": "stacking", "members": names, "coef": coef, "member_range": ranges,
              "intercept": -float(np.mean(logit(X) @ np.array([coef[m] for m in names])))}
    expected = apply_fusion(fusion, X)
    assert np.abs(expected - apply_fusion({**fusion, "member_range": None}, X)).max() > 0.05  # the clip bites
    ens = DifferentiableEnsemble({**spec, "fusion": fusion}, checkpoints)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2) / 255).requires_grad_(True)
    ours = ens(x)
    assert np.abs(ours.detach().numpy() - expected).max() < 0.02
    clipped = int(np.argmax(X[:, 0] > ranges[names[0]][1]))  # a crop above the first member's range
    ens.fused_logit(x)[clipped].backward()
    assert x.grad[clipped].abs().sum() > 0
