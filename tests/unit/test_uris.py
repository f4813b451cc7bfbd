"""`safe_uri` / `strip_credentials`: what the product writes about a URI says where, never with what key."""

from __future__ import annotations

from urllib.parse import quote

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
    # Passwords as users paste them: base64 with `/` and `+`, an `@`, a `#`, a `?`, a `:`.
    ("postgresql://u:ab/cd+ef==@host/db", "postgresql://host/db"),
    ("postgresql+psycopg2://mlflow:Zm9v/YmFy+cXV4==@postgres:5432/mlflow", "postgresql+psycopg2://postgres:5432/mlflow"),
    ("http://u:p@ss@host", "http://host"),
    ("http://u:p#ss@host:5000/x", "http://host:5000/x"),
    ("https://u:a?b=c/d@host/api?x=1", "https://host/api?x=1"),
    ("redis://:pa:ss/w@cache:6379/0", "redis://cache:6379/0"),
])
def test_safe_uri(uri: str, expected: str) -> None:
    assert safe_uri(uri) == expected


def test_strip_credentials_in_free_text_and_links() -> None:
    text = "cannot reach http://u:p4ss@h:5000/x; retry postgresql://dfd:pw@db/m"
    assert strip_credentials(text) == "cannot reach http://h:5000/x; retry postgresql://db/m"
    assert "p4ss" not in mlflow_run_link("http://u:p4ss@mlflow:5000", "1", "r", None)
    assert mlflow_run_link("sqlite:///m.db", "1", "r", "https://u:p4ss@ui") == "https://ui/#/experiments/1/runs/r"



@pytest.mark.parametrize("password", ["ab/cd+ef==", "p@ss", "p#ss/x@y", "a?b=c:d"])
def test_no_password_survives_in_free_text(password: str) -> None:
    text = f"cannot reach postgresql://dfd:{password}@db:5432/mlflow (timeout); then http://u:{password}@h/x"
    out = strip_credentials(text)
    assert password not in out and "dfd" not in out
    assert out == "cannot reach postgresql://db:5432/mlflow (timeout); then http://h/x"


def test_known_secret_values_are_hidden_wherever_they_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    token, key = "serve-token-0123456789", "deploy/key+with==odd&chars-0123456789abcdef"
    monkeypatch.setenv("DFD_SERVE_TOKEN", token)
    monkeypatch.setenv("DFD_DEPLOY_KEY", key)
    monkeypatch.setenv("DFD_SMTP_PASSWORD", "short")  # too short to be a real secret: left alone
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEID0001")  # an identifier, not a secret
    text = f"Authorization: Bearer {token}; key={key}; encoded {quote(key, safe='')}; AKIAEXAMPLEID0001 short"
    out = strip_credentials(text)
    assert token not in out and key not in out and quote(key, safe="") not in out
    assert out == "Authorization: Bearer ***; key=***; encoded ***; AKIAEXAMPLEID0001 short"
    assert safe_uri(f"https://hooks.example/{token}") == "https://hooks.example/***"
