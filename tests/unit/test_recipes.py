"""Per-model training recipes in the schema, member removal by override, and SAM's accumulation contract."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from dfd.platform.config import TrainParams, load_params, recipe
from dfd.platform.errors import ConfigError
from dfd.training.engine import Stepper
from dfd.training.optim import LrSchedule, build_optimizer
from tests.helpers import PROJECT, TINY


def _load(tmp_path: Path, override: dict) -> object:
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(override))
    return load_params(PROJECT / "params.yaml", [TINY, extra])


def test_recipe_overrides_train_and_keeps_the_rest(tmp_path: Path) -> None:
    p = _load(tmp_path, {"models": {"mesonet": {"epochs": 4, "optimizer": "sgd", "augment": ["jpeg"], "lr": 0.01}}})
    cfg = recipe(p.train, p.models["mesonet"])
    assert (cfg.epochs, cfg.optimizer, cfg.augment, cfg.lr) == (4, "sgd", ["jpeg"], 0.01)
    assert cfg.batch_size == p.train.batch_size and cfg.seed == p.train.seed
    assert recipe(p.train, p.models["xception"]) == p.train  # no recipe field set: `train:` as it is


def test_real_only_recipe_always_has_sbi(tmp_path: Path) -> None:
    p = _load(tmp_path, {"models": {"sbi": {"augment": ["hflip"]}}})
    assert p.models["sbi"].train_on == "real_only"
    assert recipe(p.train, p.models["sbi"]).augment == ["hflip", "sbi"]  # SBI makes its only positives


@pytest.mark.parametrize("override, message", [
    ({"models": {"mesonet": {"epoch": 3}}}, "unknown key 'models.mesonet.epoch'"),
    ({"models": {"mesonet": {"optimizer": "lion"}}}, "models.mesonet.optimizer"),
    ({"models": {"mesonet": {"train_on": "fakes"}}}, "models.mesonet.train_on"),
    ({"faces": {"landmarks": False}}, r"\['sbi'\] train real_only.*faces.landmarks is false"),
    ({"models": {k: None for k in ("mesonet", "xception", "efficientnet", "f3net", "sbi")}}, "no model left"),
])
def test_bad_recipes_are_one_line_config_errors(tmp_path: Path, override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _load(tmp_path, override)
    assert "\n" not in str(err.value)


def test_null_removes_a_member(tmp_path: Path) -> None:
    p = _load(tmp_path, {"models": {"sbi": None}})
    assert "sbi" not in p.models and set(p.models) == set(load_params(PROJECT / "params.yaml", [TINY]).models) - {"sbi"}


def test_real_defaults_start_from_imagenet_and_demo_and_tests_do_not() -> None:
    real = load_params(PROJECT / "params.yaml").models
    assert {k for k, m in real.items() if m.pretrained == "hub"} == {"xception", "efficientnet", "f3net", "sbi"}
    assert (real["sbi"].arch, real["sbi"].input_size, real["sbi"].optimizer) == ("efficientnet", 380, "sam")
    for override in (PROJECT / "configs" / "demo.yaml", TINY):
        assert all(m.pretrained is None for m in load_params(PROJECT / "params.yaml", [override]).models.values())


def _train(optimizer: str, accum: int, batch: int, xs: torch.Tensor, ys: torch.Tensor, model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    cfg = TrainParams(optimizer=optimizer, grad_accum_steps=accum, batch_size=batch, warmup_epochs=0,
                      scheduler="none", grad_clip=None, weight_decay=0.0, sam_rho=0.5)
    stepper = Stepper(model, build_optimizer(cfg, model.parameters(), 0.1), LrSchedule(cfg, 2), cfg,
                      torch.device("cpu"), [0.1])
    model.train()
    for i, (x, y) in enumerate(zip(xs.split(batch), ys.split(batch), strict=True)):
        stepper.micro_batch(x, y, last_of_step=(i + 1) % accum == 0)
    return model


def test_sam_with_accumulation_equals_one_big_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 1))
    xs, ys = torch.randn(16, 3, 2, 2), torch.randint(0, 2, (16,)).float()
    big = _train("sam", 1, 8, xs, ys, model)  # two steps of 8
    accumulated = _train("sam", 2, 4, xs, ys, model)  # two steps of 2 x 4 (what 2 ranks x 4 compute under DDP)
    for a, b in zip(big.parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    plain = _train("sgd", 1, 8, xs, ys, model)
    assert any(not torch.allclose(a, b) for a, b in zip(big.parameters(), plain.parameters(), strict=True))


def test_sam_updates_batch_norm_statistics_once_per_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 1))
    xs, ys = torch.randn(8, 3, 2, 2), torch.randint(0, 2, (8,)).float()
    sam, sgd = _train("sam", 1, 8, xs, ys, model), _train("sgd", 1, 8, xs, ys, model)
    # Same weights before the one step, so the same batch statistics; a second update would move them again.
    torch.testing.assert_close(sam[1].running_mean, sgd[1].running_mean)
    assert not torch.allclose(sam[1].running_mean, model[1].running_mean)
