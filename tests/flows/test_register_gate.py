"""The register stage on a real sqlite MLflow store: gate, aliases, unchanged lineage, rollback, racing promotions."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from dfd.platform.errors import DfdError
from dfd.platform.layout import Layout
from dfd.platform.tracking import Tracker
from mlflow import MlflowClient
from tasks import register
from tests.helpers import tiny_params

NAME = "deepfake-ensemble"


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    """A copy of the trained project in its own clean git repository (so its lineage has a real commit)."""
    root = tmp_path / "p"
    shutil.copytree(trained_project, root)
    (root / "README").write_text("tracked\n")  # only this is tracked: outputs written later leave the tree clean
    for cmd in (["git", "init", "-q"], ["git", "add", "README"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def _tracker(root: Path) -> Tracker:
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", "test", root / "mlruns")


def _register(root: Path, **sections: dict) -> register.RegisterResult:
    params = tiny_params(root, **sections)
    return register.run(params, Layout.from_params(params, root), _tracker(root))


def _alias(client: MlflowClient, alias: str, name: str = NAME) -> str | None:
    """The version holding `alias`; None only when MLflow says the alias is not set (any other error raises)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE" and f"alias {alias} not found" in str(exc):
            return None
        raise


def test_gate_aliases_unchanged_lineage_rollback_and_compare(project: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = project
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)

    first = _register(root)
    assert first.registered and first.passed and first.promoted and first.version == "1" and first.previous is None
    gate = json.loads((root / "artifacts" / "reports" / "gate.json").read_text())
    assert gate["passed"] and gate["checks"][-1]["name"] == "champion" and gate["champion"] is None
    assert {_alias(client, "production"), _alias(client, "candidate")} == {"1"}
    tags = client.get_model_version(NAME, "1").tags
    for key in ("git_commit", "dvc_data_hash", "params_hash", "mlflow_run_id"):
        assert tags[key] and tags[key] != "unknown", key
    assert not tags["git_commit"].endswith("-dirty")
    assert tags["training_data"] == "synthetic"  # the tiny dataset is the demo generator's
    # The version's description is its model card: the verdict, every check with its value, the lineage.
    v1 = client.get_model_version(NAME, "1")
    text = v1.description
    assert len(text) <= 5000 and "**Gate: PASSED**" in text and "trained on synthetic faces" in text.lower()
    for c in gate["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.4f}"
        assert f"| {c['name']} | {value} |" in text, c["name"]
    for key in ("git_commit", "dvc_data_hash", "params_hash"):
        assert f"| {key} | {tags[key]} |" in text, key
    logged = {a.path for a in client.list_artifacts(v1.run_id)}
    assert {"model_card.md", "gate.json", "reports", "plots"} <= logged
    assert (root / "artifacts" / "reports" / "model_card.md").read_text().startswith(f"# {NAME} v1")

    # Same commit, data and params as production: nothing is registered.
    same = _register(root)
    assert not same.registered and same.version == "1" and "nothing changed since version 1" in same.message
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1

    # A failing gate registers a candidate, leaves production where it was and tags the version rejected.
    strict = _register(root, evaluate={"gate": {"min_auc": 1.01}})
    assert strict.version == "2" and not strict.passed and not strict.promoted and strict.gate["failed"] == ["min_auc"]
    assert _alias(client, "production") == "1" and _alias(client, "candidate") == "2"
    v2 = client.get_model_version(NAME, "2").tags
    assert v2["rejected"] == "true" and v2["rejected_checks"] == "min_auc" and v2["gate_passed"] == "false"

    # A passing candidate is compared with the champion on the same crops, then promoted; v1 becomes previous.
    third = _register(root, evaluate={"gate": {"champion": {"alpha": 0.01}}})
    assert third.version == "3" and third.promoted and third.previous == "1"
    champ = third.gate["champion"]
    assert champ["version"] == "1" and champ["challenger"]["version"] == "3" and champ["n"] > 0
    assert abs(champ["test"]["diff"]) < 1e-6  # the same ensemble scored two ways: evaluated and served
    assert champ["level"] in {"video", "frame"} and champ["n_clusters"] >= 2 and champ["margin"] == 0.5
    # The same ensemble twice: DeLong's p is large, or undefined when the two rank every crop alike (se 0).
    assert not champ["delong"]["p_value"] <= 0.5 and "lower_bound_above" in third.gate["checks"][-1]["threshold"]
    assert champ["n_clusters_per_class"]["real"] >= 2 and champ["n_videos_available"] >= champ["n_videos"]
    assert client.get_model_version(NAME, "3").tags["split_scheme"] == "persons-1"
    assert _alias(client, "production") == "3" and _alias(client, "previous") == "1"
    v1 = client.get_model_version(NAME, "1").tags
    assert "replaced by version 3" in v1["archived_reason"] and v1["archived_at"]

    # Rollback (the CLI, as a user runs it in the project) restores the previous version and says who, when, why.
    from dfd.cli import main

    monkeypatch.chdir(root)  # the default params point at the project's mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.setenv("USER", "alice")
    assert main(["--params", "extra.yaml", "rollback", "--reason", "bad canary"]) == 0
    assert "moved from version 3 to version 1" in capsys.readouterr().out
    assert _alias(client, "production") == "1" and _alias(client, "previous") is None
    v3 = client.get_model_version(NAME, "3").tags
    assert v3["rolled_back_by"] == "alice" and v3["rollback_reason"] == "bad canary" and v3["rolled_back_to"] == "1"
    assert client.get_model_version(NAME, "1").tags["restored_from"] == "3"
    with pytest.raises(DfdError, match="no @previous"):
        register.rollback(tiny_params(root).registry, _tracker(root))

    # compare: both versions on the same test crops, with intervals and the AUC p-value.
    assert main(["--params", "extra.yaml", "compare", "models:/deepfake-ensemble/1", third.run_id,
                 "--bootstrap", "200", "--out", "ab.json"]) == 0
    ab = json.loads((root / "ab.json").read_text())
    assert ab["a"] == "models:/deepfake-ensemble/1" and ab["b"] == f"runs:/{third.run_id}/ensemble"
    # The same ensemble twice: a large p, or none at all when every resample gives the same difference.
    assert abs(ab["auc_test"]["diff"]) < 1e-6 and not ab["auc_test"]["p_value"] <= 0.5
    assert {"auc", "ap", "eer", "log_loss", "brier", "ece"} <= set(ab["metrics"])
    out = capsys.readouterr().out
    assert "p = " in out and "DeLong" in out and not ab["delong"]["p_value"] <= 0.5


HOLD_S = 0.5  # how long the first promotion waits, between its read and its write, for the second to read


def _race_once(first: Tracker, second: Tracker, name: str, a: str, b: str) -> dict[str, str | None]:
    """Promote `a` with `first` and `b` with `second`, the first held between its read of `production` and its
    move (`tracking.between_read_and_write`) until the second has started. Returns what each read there."""
    from dfd.platform import tracking

    read: dict[str, str | None] = {}
    first_read, second_started, second_read = threading.Event(), threading.Event(), threading.Event()
    errors: list[Exception] = []

    def hold(model: str, version: str, old: str | None) -> None:
        read[version] = old
        if version == a:  # the first: wait, between read and write, until the second promotion has started
            first_read.set()
            assert second_started.wait(60)
            second_read.wait(HOLD_S)  # without the lock, the second reads now (the same old production)
        else:
            second_read.set()

    def go(tracker: Tracker, version: str, started: threading.Event | None) -> None:
        if started is not None:
            started.set()
        try:
            tracker.promote(name, version, "production", "previous", {"archived_reason": f"replaced by {version}"})
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    tracking.between_read_and_write = hold
    try:
        one = threading.Thread(target=go, args=(first, a, None))
        one.start()
        assert first_read.wait(60)  # the first has read, and holds
        two = threading.Thread(target=go, args=(second, b, second_started))
        two.start()
        one.join(120)
        two.join(120)
    finally:
        tracking.between_read_and_write = None
    assert not errors, errors
    return read


def race_promotions(uri: str, name: str, artifact_root: Path | None) -> None:
    """Two promotions at once, each with its own Tracker, twice (each tracker first once): the second must wait for
    the first and read its result, so `previous` ends on the first's version and `production` on one version."""
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(name)
    trackers = [Tracker(uri, "race", artifact_root) for _ in range(2)]
    run = client.create_run(trackers[0].experiment_id)  # a server accepts only sources inside a run's artifacts
    versions = [str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version)
                for _ in range(5)]
    trackers[0].promote(name, versions[0], "production", "previous", {})
    production = versions[0]
    for first, a, b in ((0, versions[1], versions[2]), (1, versions[3], versions[4])):
        read = _race_once(trackers[first], trackers[1 - first], name, a, b)
        # Serialised: the second read the first's result, so `previous` is the first, not the old production.
        assert read == {a: production, b: a}
        assert (_alias(client, "production", name), _alias(client, "previous", name)) == (b, a)
        holders = [v for v in versions if "production" in client.get_model_version(name, v).aliases]
        assert holders == [b]
        production = b


def test_two_racing_promotions_leave_one_production(tmp_path: Path) -> None:
    # The lock file beside the sqlite store serialises them (tests/unit/test_services.py races against a server).
    race_promotions(f"sqlite:///{tmp_path / 'mlflow.db'}", NAME, tmp_path / "mlruns")
