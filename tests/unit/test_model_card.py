"""The model card: the description fits MLflow's 5,000 characters and states the verdict, each check, the lineage."""

from __future__ import annotations

import re

from dfd.evaluation.gate import decide
from dfd.evaluation.model_card import DESCRIPTION_LIMIT, SYNTHETIC_WARNING, CardInputs, model_card
from dfd.platform.config import GateParams

METRICS = {"ensemble": {"n": 412.0, "auc": 0.9712, "auc_ci_low": 0.95, "auc_ci_high": 0.985, "video_auc": 0.98,
                        "eer": 0.06, "accuracy": 0.93, "video_ece": 0.031, "video_ece_ci_low": 0.02,
                        "video_ece_ci_high": 0.05, "video_ece_equal_mass": 0.04, "ci_clusters": 12.0},
           "threshold": 0.47, "drift": {"drifted_share": 0.25},
           "cross_dataset": {"demo": {"auc": 0.97, "eer": 0.06, "video_auc": 0.98},
                             "ffpp": {"auc": 0.61, "eer": 0.41, "video_auc": 0.66}}}
ROBUSTNESS = {"perturbed": {"jpeg": {"90": {"auc_drop": 0.01}, "30": {"auc_drop": 0.09}}},
              "adversarial": {"fgsm": {"4": {"auc_drop": 0.6}}}}
LINEAGE = {"git_commit": "0123abcd" * 5, "dvc_data_hash": "d41d8cd98f00b204e9800998ecf8427e",
           "params_hash": "feedbeef", "prefect_flow_run_id": "flow-42", "mlflow_run_id": "r" * 32, "dataset": "demo"}
TRAINING = {"per_split": {"train": {"real": 120, "fake": 118}, "val": {"real": 30, "fake": 31},
                          "test": {"real": 29, "fake": 33}},
            "identities": {"train": 28, "val": 6, "test": 6}, "methods": {"blend": 182}, "split_scheme": "persons-1",
            "clusters": {"train": {"all": 28, "real": 27, "fake": 28}, "val": {"all": 6, "real": 6, "fake": 6},
                         "test": {"all": 6, "real": 5, "fake": 6}}}


def _inputs(gate: dict, **kw: object) -> CardInputs:
    base = {"model_name": "deepfake-ensemble", "version": "7", "run_id": "r" * 32, "gate": gate, "metrics": METRICS,
            "robustness": ROBUSTNESS, "lineage": LINEAGE, "training": TRAINING, "members": ["mesonet", "xception"],
            "fusion": "weighted_average", "experiment_id": "3",
            "artifacts": ["model_card.md", "gate.json", "plots/roc_test.png"]}
    return CardInputs(**{**base, **kw})


def _rows(description: str) -> dict[str, list[str]]:
    """The gate table's rows by check name, read back out of the Markdown."""
    out = {}
    for line in description.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 5 and cells[3] in ("PASS", "FAIL"):
            out[cells[0]] = cells
    return out


def test_the_description_states_the_verdict_each_check_and_the_lineage() -> None:
    gate = decide(GateParams(min_auc=0.99), METRICS, ROBUSTNESS, None)  # min_auc 0.99 fails
    full, description = model_card(_inputs(gate, synthetic=True))
    assert len(description) <= DESCRIPTION_LIMIT
    assert "**Gate: FAILED** (min_auc)" in description and f"WARNING: {SYNTHETIC_WARNING}" in description
    rows = _rows(description)
    assert set(rows) == {c["name"] for c in gate["checks"]}
    for c in gate["checks"]:
        value = "-" if c["value"] is None else f"{c['value']:.4f}"
        assert rows[c["name"]][1] == value and rows[c["name"]][3] == ("PASS" if c["passed"] else "FAIL")
    assert rows["min_auc"][1] == "0.9712" and rows["min_auc"][2] == ">= 0.99"
    for key in ("git_commit", "dvc_data_hash", "params_hash", "prefect_flow_run_id"):
        assert f"| {key} | {LINEAGE[key]} |" in description
    assert "| AUC (frames) | 0.9712 | [0.9500, 0.9850] |" in description  # a metric with its interval
    assert "[run " + "r" * 32 + "](#/experiments/3/runs/" in description  # the link to the full card
    for section in ("## Training data", "## Robustness and other datasets", "## Load and serve",
                    "## Intended use and known limits", "| test | 29 | 33 | 5 | 6 | 6 |", "Split by `persons-1`",
                    "| ffpp | 0.6100 |"):
        assert section in full, section


def test_a_long_card_keeps_the_verdict_and_names_what_it_left_out() -> None:
    gate = decide(GateParams(), METRICS, ROBUSTNESS, None)
    many = {f"dataset_{i:03d}": {"auc": 0.5 + i / 1000, "eer": 0.3, "video_auc": 0.6} for i in range(200)}
    full, description = model_card(_inputs(gate, metrics={**METRICS, "cross_dataset": many}))
    assert len(description) <= DESCRIPTION_LIMIT < len(full)
    assert "**Gate: PASSED**" in description or "**Gate: FAILED**" in description
    assert "Not shown here (5,000-character limit): Robustness and other datasets" in description
    assert "dataset_199" in full and "dataset_199" not in description
    assert set(_rows(description)) == {c["name"] for c in gate["checks"]}
    assert SYNTHETIC_WARNING not in full  # ingested data: no warning
