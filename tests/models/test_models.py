"""Every registered model: forward and backward at a tiny size, shapes, no NaN, checkpoints that rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dfd.platform.errors import ConfigError
from models import create_model, list_models, model_config
from models.checkpoint import build_from_checkpoint, load_checkpoint

TINY = {"f3net": 64, "xception": 64, "efficientnet": 64}


def test_the_four_detectors_are_registered() -> None:
    assert {"mesonet", "xception", "efficientnet", "f3net"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    size = TINY.get(name, 64)
    torch.manual_seed(0)
    model = create_model(name, input_size=size)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_meso4_parameter_count_matches_the_paper() -> None:
    # Afchar et al. report 27,977 trainable parameters for Meso4 at 256x256.
    assert sum(p.numel() for p in create_model("mesonet").parameters()) == 27_977


def test_registered_configs() -> None:
    assert model_config("xception").input_size == 299
    assert model_config("f3net").input_size == 299
    assert model_config("efficientnet").input_size == 224
    assert model_config("efficientnet", 380).input_size == 380


def test_f3net_has_both_branches() -> None:
    model = create_model("f3net", input_size=64)
    names = {n for n, _ in model.named_children()}
    assert {"fad", "lfs", "fad_net", "lfs_net", "mix7", "mix12"} <= names
    fad = model.fad(torch.randn(1, 3, 64, 64))
    assert fad.shape == (1, 12, 64, 64)
    lfs = model.lfs(torch.randn(1, 3, 64, 64))
    assert lfs.shape == (1, 6, 28, 28)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown model architecture 'resnet9000'"):
        create_model("resnet9000")


def test_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = create_model("mesonet", input_size=64).eval()
    path = tmp_path / "m.pt"
    torch.save({"arch": "mesonet", "model_kwargs": {"input_size": 64}, "state_dict": model.state_dict()}, path)
    rebuilt = build_from_checkpoint(load_checkpoint(path))
    x = torch.randn(3, 3, 64, 64)
    assert torch.equal(model(x), rebuilt(x))


def test_pretrained_local_file_and_clear_errors(tmp_path: Path) -> None:
    from models.weights import load_pretrained

    source = create_model("xception", input_size=64)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    target = create_model("xception", input_size=64)
    load_pretrained(target, str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))
    with pytest.raises(ConfigError, match="pretrained weights not found"):
        load_pretrained(target, str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="no hub backbone"):
        load_pretrained(create_model("mesonet", input_size=64), "hub")


def test_hub_weights_fail_clearly_offline(empty_caches: Path) -> None:
    # Offline with empty caches (whatever this machine's own caches hold): a clear error, not a hang.
    from models.weights import load_pretrained

    with pytest.raises(ConfigError, match="could not fetch pretrained 'legacy_xception'"):
        load_pretrained(create_model("xception", input_size=64), "hub")


def test_our_xception_is_timms_legacy_xception_at_width_one() -> None:
    # Same module names and tensor shapes, so timm's ImageNet weights load and the paper's network is what trains.
    import timm

    from models.xception_net import Xception

    ours = Xception(3).state_dict()
    ref = timm.create_model("legacy_xception", pretrained=False, num_classes=0).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


@pytest.mark.parametrize("name", ["xception", "f3net"])
def test_width_shrinks_the_network_and_keeps_it_trainable(name: str) -> None:
    full = sum(p.numel() for p in create_model(name, input_size=64).parameters())
    model = create_model(name, input_size=64, width=0.125)
    small = sum(p.numel() for p in model.parameters())
    assert small < full / 20
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_hub_weights_need_the_full_width() -> None:
    from models.weights import load_pretrained

    with pytest.raises(ConfigError, match="width"):
        load_pretrained(create_model("xception", input_size=64, width=0.5), "hub")
