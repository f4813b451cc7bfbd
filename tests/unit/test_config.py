"""params.yaml is the single source of truth: typed, validated, with errors that name the key and the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfd.cli import main
from dfd.platform.config import Params, load_params
from dfd.platform.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[2]


def test_params_yaml_matches_the_typed_defaults() -> None:
    # The file repeats every default so DVC can track them; the two must never drift apart.
    assert load_params(PROJECT / "params.yaml") == Params()


def test_defaults_are_the_real_sizes() -> None:
    p = Params()
    assert p.models["xception"].input_size == 299 and p.models["f3net"].input_size == 299
    assert p.models["mesonet"].input_size == 256 and p.train.epochs >= 10 and p.faces.frames_per_video == 32


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert "train.learning_rate" in str(err.value) and str(bad) in str(err.value)


def test_wrong_type_names_key(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_params(bad)


def test_error_names_the_override_that_set_the_key(tmp_path: Path) -> None:
    override = tmp_path / "small.yaml"
    override.write_text("faces:\n  margins: 1.2\n")
    with pytest.raises(ConfigError) as err:
        load_params(PROJECT / "params.yaml", [override])
    assert str(override) in str(err.value) and "faces.margins" in str(err.value)


def test_override_wins_and_merges_deeply(tmp_path: Path) -> None:
    override = tmp_path / "o.yaml"
    override.write_text("train:\n  epochs: 1\nmodels:\n  mesonet: {input_size: 64}\n")
    p = load_params(PROJECT / "params.yaml", [override])
    assert p.train.epochs == 1 and p.train.batch_size == Params().train.batch_size
    assert p.models["mesonet"].input_size == 64 and p.models["xception"].input_size == 299


def test_cross_field_rule(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("ingest:\n  val_share: 0.6\n  test_share: 0.5\n")
    with pytest.raises(ConfigError, match="val_share"):
        load_params(bad)


def test_params_are_frozen() -> None:
    with pytest.raises(Exception):  # noqa: B017  (pydantic's ValidationError for frozen instances)
        Params().train.epochs = 3  # type: ignore[misc]


def test_digest_changes_with_a_value() -> None:
    assert Params().digest() != Params.model_validate({"train": {"epochs": 3}}).digest()


def test_cli_schema_and_bad_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(PROJECT / "params.yaml"), "config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"data", "faces", "train", "models", "evaluate"} <= set(schema["properties"])
    bad = tmp_path / "params.yaml"
    bad.write_text("trian:\n  epochs: 1\n")
    assert main(["--params", str(bad), "config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'trian'" in err[0] and str(bad) in err[0]


def test_cli_missing_params_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(tmp_path / "nope.yaml"), "config"]) == 2
    assert "params file not found" in capsys.readouterr().err
