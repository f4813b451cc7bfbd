"""The training engine's parts: schedules with warm-up, the NaN guard, early stopping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dfd.platform.config import TrainParams
from dfd.platform.errors import TrainingError
from dfd.platform.layout import Layout
from dfd.training.engine import Stepper
from dfd.training.optim import LrSchedule, build_optimizer
from tasks import faces, ingest, train
from tests.helpers import tiny_params


def _schedule(**kw: object) -> LrSchedule:
    return LrSchedule(TrainParams(epochs=10, **kw), steps_per_epoch=10)


def test_warmup_then_cosine_to_zero() -> None:
    s = _schedule(scheduler="cosine", warmup_epochs=1)
    assert [round(s.factor(i), 2) for i in range(3)] == [0.1, 0.2, 0.3]
    assert s.factor(9) == 1.0 and s.factor(10) == pytest.approx(1.0)
    assert s.factor(99) < 0.01 and s.factor(55) < s.factor(30)


def test_step_and_plateau() -> None:
    step = _schedule(scheduler="step", warmup_epochs=0, step_epochs=2, gamma=0.5)
    assert [step.factor(i) for i in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    plateau = _schedule(scheduler="plateau", warmup_epochs=0, plateau_patience=1, gamma=0.1)
    for auc in (0.7, 0.8, 0.8, 0.79):
        plateau.epoch_end(auc)
    assert plateau.factor(50) == pytest.approx(0.1)
    restored = _schedule(scheduler="plateau", warmup_epochs=0)
    restored.load_state_dict(plateau.state_dict())
    assert restored.factor(0) == plateau.factor(0)


def test_nan_loss_stops_with_the_step_named() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    cfg = TrainParams()
    opt = build_optimizer(cfg, model.parameters(), 1e-3)
    stepper = Stepper(model, opt, LrSchedule(cfg, 1), cfg, torch.device("cpu"), [1e-3], step=6)
    with pytest.raises(TrainingError, match="loss is nan at optimiser step 7"):
        stepper.micro_batch(torch.randn(2, 3, 2, 2), torch.tensor([0.0, 1.0]), last_of_step=True)


def test_gradient_accumulation_equals_the_big_batch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4), torch.tensor([0.0, 1.0] * 4)
    results = []
    for accum, chunks in ((1, [slice(0, 8)]), (2, [slice(0, 4), slice(4, 8)])):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 1))
        cfg = TrainParams(grad_accum_steps=accum, grad_clip=None, warmup_epochs=0, scheduler="none")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        stepper = Stepper(model, opt, LrSchedule(cfg, 1), cfg, torch.device("cpu"), [0.1])
        for i, part in enumerate(chunks):
            stepper.micro_batch(x[part], y[part], last_of_step=(i + 1) % accum == 0)
        results.append(model[1].weight.detach().clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)


def test_early_stopping(tiny_project: Path) -> None:
    # A learning rate too small to change anything: validation AUC never improves after the first epoch.
    params = tiny_params(tiny_project, train={"epochs": 5, "lr": 1e-12, "early_stop_patience": 1,
                                              "warmup_epochs": 0})
    layout = Layout.from_params(params, tiny_project)
    ingest.run(params, layout)
    faces.run(params, layout)
    res = train.run(params, layout, "mesonet", progress=False)
    aucs = [h["val_auc"] for h in res.summary["history"]]
    last_best = max(i for i, a in enumerate(aucs) if a > max(aucs[:i], default=-1))
    # Training ran exactly `patience` epochs past its last improvement (BN statistics still move a little).
    assert res.summary["stopped_early"] and res.summary["epochs_run"] == last_best + 1 + 1
