"""The champion check at flow level, at the real margin: a degraded retrain is rejected as worse, a faithful one
is not, and `@production` moves only for the second (real Prefect server, real sqlite MLflow registry).

The session's trained project holds a few identity clusters, too few for the default 20 per class, so this test
draws its own data: 72 drawn people with one still each (a real, its donor's real, a blended fake: one identity
cluster of 3 stills per person), of which the split puts 22 clusters in test. One member (MesoNet, cheap) learns
the blends in 100 steps (test AUC ~0.99). The degraded retrain trains a MesoNet at lr 1e-9 instead: it stays at its
random start and, being the only member, is the whole fusion. It trains under another name, so that the first
member's files stay as they were and the third run (the first run's recipe) reuses them through the flow's stage
cache: its candidate is the first run's model, compared with itself (one training process fewer, ~10 s of CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dfd.data.demo_data import generate
from tests.helpers import PROJECT, TINY

pytestmark = pytest.mark.slow

# The ensemble is MesoNet alone, trained long enough to learn the demo's blends; dlib's HOG finds every drawn face.
BASE = {"data": {"root": "raw"}, "ingest": {"val_share": 0.2, "test_share": 0.4}, "faces": {"detector": "dlib_hog"},
        "models": {"xception": None, "efficientnet": None, "f3net": None, "sbi": None},
        "train": {"epochs": 5, "max_steps_per_epoch": 20, "lr": 0.001},
        # No drift report (and so no drift check) and no attacks: this test is about the champion check, and each
        # costs seconds per run. The real number of clusters per class (tests/params.tiny.yaml lowers it to 2),
        # every test sample compared.
        "evaluate": {"drift_report": False, "adversarial": {"epsilons": []},
                     "gate": {"max_drift_share": None,
                              "champion": {"min_clusters_per_class": 20, "max_videos": 1000}}}}
MARGIN = {"evaluate": {"gate": {"champion": {"margin": 0.01}}}}  # the default margin (tiny params: 0.5)
# The member learns nothing: it scores from its random start.
DEGRADED = {"models": {"mesonet": None, "untrained": {"arch": "mesonet", "input_size": 64, "lr": 1e-9}}}


def test_a_degraded_retrain_is_worse_than_the_margin_and_a_faithful_one_is_not(
        prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import pipeline
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path
    generate(root / "raw", seed=0, identities=72, images_per_identity=1, videos=0, image_size=128)
    for name, data in (("base.yaml", BASE), ("margin.yaml", MARGIN), ("degraded.yaml", DEGRADED)):
        (root / name).write_text(yaml.safe_dump(data))
    (root / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    (root / "tiny.yaml").write_text(TINY.read_text())
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)

    def production() -> str:
        return str(client.get_model_version_by_alias("deepfake-ensemble", "production").version)

    first = pipeline(path="params.yaml", overrides=["tiny.yaml", "base.yaml"], root=str(root))
    assert first.promoted and first.version == "1" and production() == "1"
    assert first.metrics["auc"] >= 0.9  # a champion worth defending: the comparison below is not chance vs chance

    degraded = pipeline(path="params.yaml", overrides=["tiny.yaml", "base.yaml", "margin.yaml", "degraded.yaml"],
                        root=str(root))
    champion = degraded.gate["champion"]
    check = next(c for c in degraded.gate["checks"] if c["name"] == "champion")
    assert champion["version"] == "1" and champion["margin"] == 0.01
    assert min(champion["n_clusters_per_class"].values()) >= 20 and "too_few" not in champion
    assert champion["test"]["upper"] < -0.01  # the whole one-sided interval lies below -margin
    assert "worse than the margin 0.01 allows" in check["detail"] and "too few" not in check["detail"]
    assert degraded.gate["failed"] == ["champion"] and not check["passed"]
    assert degraded.version == "2" and degraded.registered and not degraded.promoted
    assert production() == "1"  # read back from the registry: the rejected version moved nothing
    v2 = client.get_model_version("deepfake-ensemble", "2").tags
    assert v2["rejected"] == "true" and v2["rejected_checks"] == "champion"

    # The first run's recipe again, with the margin of 0.01 (so the lineage differs and the version is registered
    # and compared): its member is reused, the ensemble refitted; the check must not call it worse: it is promoted.
    faithful = pipeline(path="params.yaml", overrides=["tiny.yaml", "base.yaml", "margin.yaml"], root=str(root))
    champion = faithful.gate["champion"]
    check = next(c for c in faithful.gate["checks"] if c["name"] == "champion")
    assert champion["version"] == "1" and min(champion["n_clusters_per_class"].values()) >= 20
    assert "worse than the margin" not in check["detail"] and check["passed"], check["detail"]
    assert faithful.version == "3" and faithful.promoted and production() == "3"
