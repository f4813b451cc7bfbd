"""The ONNX Runtime engine: export round trip, engine selection and fallback, the int8 gate row, the preflight line.

One module fixture registers the session's trained project once more with `ensemble.export` on (fp32 and int8
members, real torch exporter, real ONNX Runtime quantisation) and `serve.engine: onnxruntime`, `precision: int8`.
"Not installed" is played by blocking the import in `sys.modules` (the real ImportError path), since the package is
installed here.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dfd.platform.config import Params
from dfd.platform.files import read_json
from tests.helpers import tiny_params

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@dataclass
class Exported:
    root: Path
    params: Params
    tracking_uri: str
    uri: str  # models:/name/version (promoted or not: the int8 gate row decides)
    reports: Path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, trained_project: Path) -> Exported:
    from dfd.platform.layout import Layout
    from dfd.platform.tracking import Tracker
    from tasks import register

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("onnx") / "project"
    shutil.copytree(trained_project, root)
    params = tiny_params(root, mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
                         ensemble={"export": {"onnx": True, "int8": True}},
                         serve={"engine": "onnxruntime", "precision": "int8"})
    tracker = Tracker.from_params(params, root)
    layout = Layout.from_params(params, root)
    res = register.run(params, layout, tracker)
    yield Exported(root, params, tracker.tracking_uri, f"models:/{res.model_name}/{res.version}", layout.reports_dir)
    if saved is not None:
        os.environ["MLFLOW_TRACKING_URI"] = saved


def _example(model) -> np.ndarray:
    return np.asarray(model.pyfunc.input_example).astype(np.uint8)


def test_export_round_trip_agrees_with_torch(exported: Exported) -> None:
    """Each ONNX member scores the crops as its checkpoint does; the report says so and says it truthfully."""
    from dfd.serving.ensemble import MemberModel
    from dfd.serving.onnx_engine import OnnxMember
    from dfd.serving.registry_model import load

    report = read_json(exported.reports / "export.json")
    assert set(report["files"]) == {"fp32", "int8"} and report["opset"] == 18
    fp32 = report["fp32"]
    assert max(fp32["max_abs_dp"], *fp32["max_abs_dp_member"].values()) <= exported.params.ensemble.export.max_fp32_dp
    assert max(fp32["max_abs_dp_member"].values()) < 1e-5 and fp32["equal_labels"] == 1.0
    assert fp32["max_abs_d_fused_logit"] < 1e-3  # recorded, not bounded: float32 P's logit is coarse near 0 and 1
    assert fp32["auc_diff"] is None or abs(fp32["auc_diff"]) < 1e-6
    # Recomputed from the logged artifacts: the ONNX file against the checkpoint, member by member.
    model = load(exported.uri, exported.tracking_uri)
    crops = _example(model)
    artifacts = model.python_model.artifacts
    for m in model.python_model.spec["members"]:
        torch_member = MemberModel(Path(artifacts[f"member_{m}"]))
        onnx_member = OnnxMember(Path(artifacts[f"onnx_fp32_{m}"]), torch_member.config)
        assert np.max(np.abs(onnx_member(crops) - torch_member(crops))) < 1e-5, m
        int8 = OnnxMember(Path(artifacts[f"onnx_int8_{m}"]), torch_member.config, "int8")
        assert int8(crops).shape == (len(crops),)
    # The served model's requirements name the engine's package (MLflow's own environments install it).
    import mlflow.pyfunc

    from dfd.platform.tracking import fluent_uris

    with fluent_uris(exported.tracking_uri):
        requirements = Path(mlflow.pyfunc.get_model_dependencies(exported.uri)).read_text().splitlines()
    assert any(r.startswith("onnxruntime==") for r in requirements)


def test_engine_is_chosen_at_load_and_measured(exported: Exported) -> None:
    """`serve.engine` picks at load; every non-torch-fp32 choice is measured against torch fp32, and bounded."""
    from dfd.serving.onnx_engine import OnnxMember
    from dfd.serving.registry_model import PrecisionError, load

    torch_fp32 = load(exported.uri, exported.tracking_uri)
    crops = _example(torch_fp32)
    exact = torch_fp32.pyfunc.predict(crops)
    assert torch_fp32.engine == "torch" and torch_fp32.python_model.predictor.engine == "torch"
    ort = load(exported.uri, exported.tracking_uri, engine="onnxruntime")
    assert ort.engine == "onnxruntime" and ort.info()["engine"] == "onnxruntime"
    assert all(isinstance(m, OnnxMember) for m in ort.python_model.predictor.members.values())
    assert ort.precision_error < 1e-5
    assert np.max(np.abs(ort.pyfunc.predict(crops) - exact)) < 1e-5
    int8 = load(exported.uri, exported.tracking_uri, precision="int8", engine="onnxruntime", max_precision_error=1.0)
    assert int8.precision == "int8" and {m.precision for m in int8.python_model.predictor.members.values()} == {"int8"}
    assert int8.precision_error == pytest.approx(float(np.max(np.abs(int8.pyfunc.predict(crops) - exact))), abs=1e-6)
    assert int8.precision_error > 0  # quantised convolutions move P(fake)
    with pytest.raises(PrecisionError, match="onnxruntime int8 moves P\\(fake\\) by"):
        load(exported.uri, exported.tracking_uri, precision="int8", engine="onnxruntime",
             max_precision_error=int8.precision_error / 2)


def test_a_version_without_onnx_members_says_so(registered) -> None:
    """The session's registered version was logged without the export: asking for onnxruntime is one clear error."""
    from dfd.serving.registry_model import PrecisionError, load

    with pytest.raises(PrecisionError, match="no fp32 ONNX members") as err:
        load(registered.uri, registered.tracking_uri, engine="onnxruntime")
    assert "serve.engine: torch" in str(err.value)


def test_mlflow_load_runs_the_registered_engine_and_falls_back_once(exported: Exported,
                                                                    caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own loader (what `mlflow models serve` runs) reads the engine logged with the version; without
    onnxruntime it runs torch and says so once per process, with the one-line fix."""
    import mlflow.pyfunc

    from dfd.platform.tracking import fluent_uris
    from dfd.serving import onnx_engine
    from dfd.serving.registry_model import load

    with fluent_uris(exported.tracking_uri):
        plain = mlflow.pyfunc.load_model(exported.uri).unwrap_python_model()
    assert plain.predictor.engine == "onnxruntime" and plain.predictor.precision == "int8"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails from here on
    monkeypatch.setattr(onnx_engine, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="dfd.serving.onnx_engine"):
        with fluent_uris(exported.tracking_uri):
            fallback = mlflow.pyfunc.load_model(exported.uri).unwrap_python_model()
        again = load(exported.uri, exported.tracking_uri, precision="int8", engine="onnxruntime")
    assert fallback.predictor.engine == "torch" and fallback.predictor.precision == "fp32"
    assert again.engine == "torch" and "pip install 'dfd[onnx]'" in again.engine_fallback
    said = [r.getMessage() for r in caplog.records if "onnxruntime is not installed" in r.getMessage()]
    assert len(said) == 1 and "pip install 'dfd[onnx]'" in said[0]


def test_cli_predict_engine_flag(exported: Exported, media: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`dfd predict --engine` picks the engine (printed with its measured distance); a precision the engine does not
    run is one line, exit 2."""
    import json

    from dfd.cli import main

    monkeypatch.chdir(exported.root)
    base = ["--params", str(exported.root / "extra.yaml"), "predict", str(media["face"]), "--model", exported.uri,
            "--no-progress"]
    assert main([*base, "--engine", "onnxruntime", "--precision", "fp32", "--out", str(tmp_path / "o.json")]) == 0
    said = capsys.readouterr().out
    assert "onnxruntime fp32: P(fake) within" in said
    assert main([*base, "--engine", "torch", "--out", str(tmp_path / "t.json")]) == 2  # params say int8
    assert "serve.precision int8 is not run by serve.engine torch" in capsys.readouterr().err
    assert main([*base, "--engine", "torch", "--precision", "fp32", "--out", str(tmp_path / "t.json")]) == 0
    ort, exact = (json.loads((tmp_path / f).read_text())[0]["p_fake"] for f in ("o.json", "t.json"))
    assert ort == pytest.approx(exact, abs=1e-5)


def test_int8_gate_row_in_the_registered_gate(exported: Exported) -> None:
    """int8 asked for: gate.json carries its agreement row, with the value export.json measured."""
    gate = read_json(exported.reports / "gate.json")
    report = read_json(exported.reports / "export.json")
    row = next(c for c in gate["checks"] if c["name"] == "int8_equal_labels")
    assert row["value"] == pytest.approx(report["int8"]["equal_labels"]) and row["threshold"] == 0.995
    assert row["passed"] == (report["int8"]["equal_labels"] >= 0.995)


def test_int8_gate_rows_pass_and_fail() -> None:
    from dfd.evaluation.gate import int8_checks

    def report(equal: float | None, shift: float, max_shift: float | None = None) -> dict:
        return {"files": {"fp32": {}, "int8": {}}, "int8": {"equal_labels": equal, "max_abs_d_fused_logit": shift,
                                                           "crops": 400},
                "bounds": {"int8_min_equal_labels": 0.995, "int8_max_logit_shift": max_shift}}

    assert int8_checks(None) == [] and int8_checks({"files": {"fp32": {}}}) == []  # int8 not asked for: no row
    (ok,) = int8_checks(report(0.9975, 0.3))
    assert ok.passed and ok.value == 0.9975 and ok.op == ">="
    (bad,) = int8_checks(report(0.99, 0.3))
    assert not bad.passed and "misses >= 0.995" in bad.detail
    (missing,) = int8_checks(report(None, 0.3))
    assert not missing.passed and "not measured" in missing.detail
    labels, shift = int8_checks(report(1.0, 0.3, max_shift=0.2))
    assert labels.passed and shift.name == "int8_max_logit_shift" and not shift.passed


def test_preflight_names_the_missing_export_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    from dfd.platform.errors import ConfigError
    from tasks.preflight import check_export, export_problem

    on = Params.model_validate({"ensemble": {"export": {"onnx": True}}})
    assert export_problem(Params()) is None and export_problem(on) is None  # off; on with everything installed
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    problem = export_problem(on)
    assert problem == ("ensemble.export.onnx needs the packages onnxscript, not installed here: pip install "
                       "'dfd[onnx]' (or: pip install onnxruntime), or set it to false")
    with pytest.raises(ConfigError, match="onnxscript"):
        check_export(on)


def test_engine_and_precision_must_match() -> None:
    from pydantic import ValidationError

    from dfd.platform.config import ServeParams

    assert ServeParams(engine="onnxruntime", precision="int8").precision == "int8"
    for engine, precision in (("torch", "int8"), ("onnxruntime", "bf16")):
        with pytest.raises(ValidationError, match=f"not run by serve.engine {engine}"):
            ServeParams(engine=engine, precision=precision)
