"""`safe_uri` / `strip_credentials`: what the product writes about a URI says where, never with what key."""

from __future__ import annotations

import pytest

from dfd.platform.alerts import mlflow_run_link
from dfd.platform.uris import safe_uri, strip_credentials


@pytest.mark.parametrize(("uri", "expected"), [
    ("http://alice:s3cret@mlflow:5000", "http://mlflow:5000"),
    ("https://token@host/api/2.0", "https://host/api/2.0"),
    ("postgresql+psycopg2://dfd:pw@postgres:5432/mlflow", "postgresql+psycopg2://postgres:5432/mlflow"),
    ("s3://bucket/models/x", "s3://bucket/models/x"),
    ("sqlite:////tmp/a b/mlflow.db", "sqlite:////tmp/a b/mlflow.db"),
    ("/plain/path/mlflow.db", "/plain/path/mlflow.db"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA&part=2",
     "https://b.s3.amazonaws.com/k?X-Amz-Signature=%2A%2A%2A&X-Amz-Credential=%2A%2A%2A&part=2"),
])
def test_safe_uri(uri: str, expected: str) -> None:
    assert safe_uri(uri) == expected


def test_strip_credentials_in_free_text_and_links() -> None:
    text = "cannot reach http://u:p4ss@h:5000/x; retry postgresql://dfd:pw@db/m"
    assert strip_credentials(text) == "cannot reach http://h:5000/x; retry postgresql://db/m"
    assert "p4ss" not in mlflow_run_link("http://u:p4ss@mlflow:5000", "1", "r", None)
    assert mlflow_run_link("sqlite:///m.db", "1", "r", "https://u:p4ss@ui") == "https://ui/#/experiments/1/runs/r"

