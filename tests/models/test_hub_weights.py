"""ImageNet starts offline: the preflight names missing weights, `dfd weights fetch` fills the cache from a local
HTTP server standing in for the hub, and the weights' name and hash join the lineage."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch

from dfd.platform.errors import ConfigError
from models import create_model
from models.hub_cache import sha256
from models.weights import load_pretrained
from tasks.preflight import check_weights
from tests.helpers import tiny_params

HUB = {"models": {"efficientnet": {"pretrained": "hub"}, "sbi": {"pretrained": "hub"}}}  # both test_efficientnet


def _weights_file(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on a free loopback port serving a folder of `<name>.pth` files (stopped at the end)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_offline_preflight_names_the_missing_weights_in_one_line(empty_caches: Path, tmp_path: Path) -> None:
    params = tiny_params(tmp_path, **HUB)
    with pytest.raises(ConfigError) as err:
        check_weights(params)
    line = str(err.value)
    assert "\n" not in line and "['efficientnet', 'sbi']" in line and "['test_efficientnet']" in line
    assert str(empty_caches) in line and "dfd weights fetch" in line
    check_weights(params, ["mesonet"])  # a model without ImageNet start needs nothing
    check_weights(tiny_params(tmp_path))  # the test params train from scratch


def test_a_hand_filled_cache_passes_and_loads_offline_with_its_hash(empty_caches: Path, tmp_path: Path) -> None:
    state = _weights_file(empty_caches / "test_efficientnet.pth")
    check_weights(tiny_params(tmp_path, **HUB))
    model = create_model("efficientnet", input_size=32, variant="test_efficientnet")
    lineage = load_pretrained(model, "hub")
    (w,) = lineage["weights"]
    assert w["name"] == "test_efficientnet" and w["sha256"] == sha256(empty_caches / "test_efficientnet.pth")
    assert w["loaded_share"] > 0.9  # all but the new head
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in state.items())


def test_weights_fetch_fills_the_cache_from_a_mirror(empty_caches: Path, mirror: tuple[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dfd.cli import main

    url, folder = mirror
    _weights_file(folder / "test_efficientnet.pth")
    assert main(["weights", "fetch", "--name", "test_efficientnet", "--mirror", url]) == 0
    out = capsys.readouterr().out
    cached = empty_caches / "test_efficientnet.pth"
    assert cached.read_bytes() == (folder / "test_efficientnet.pth").read_bytes()
    assert f"cache: {empty_caches}" in out
    manifest = json.loads((empty_caches / "manifest.json").read_text())
    assert manifest["test_efficientnet"]["sha256"] == sha256(cached)

    (folder / "junk.pth").write_text("<html>not weights</html>")
    for name in ("junk", "absent"):  # not a state dict; a 404
        assert main(["weights", "fetch", "--name", name, "--mirror", url]) == 2
        err = capsys.readouterr().err
        assert f"could not fetch weights '{name}'" in err and "Traceback" not in err
        assert not (empty_caches / f"{name}.pth").exists()
    assert not list(empty_caches.glob(".*.part"))


def test_training_lineage_records_the_weights_hash(empty_caches: Path, trained_project: Path, tmp_path: Path) -> None:
    from tasks import train
    from tasks.register import _weights_tags

    _weights_file(empty_caches / "test_efficientnet.pth")
    params = tiny_params(trained_project, **HUB)
    res = train.train_model("sbi", params.models["sbi"], params.train, trained_project / "data" / "faces" /
                            "index.parquet", tmp_path / "sbi", progress=False)
    digest = sha256(empty_caches / "test_efficientnet.pth")
    assert res.summary["pretrained"]["weights"][0]["sha256"] == digest
    assert _weights_tags({"sbi": tmp_path / "sbi"}, ["sbi"]) == {"weights_sbi": f"test_efficientnet@sha256:{digest}"}
