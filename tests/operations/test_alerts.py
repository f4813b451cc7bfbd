"""Alerts through the flow: a real SMTP server (aiosmtpd, STARTTLS with a throwaway CA, login) and a real HTTP
webhook receiver on loopback; the secrets never reach logs, MLflow, artifacts or Prefect's database."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfd.platform.alerts import alert, check_alert_settings, send_email, send_slack
from dfd.platform.config import AlertParams, EmailAlertParams, SlackAlertParams
from dfd.platform.errors import ConfigError
from dfd.platform.uris import HIDDEN
from tests.helpers import PROJECT, TINY

PASSWORD = f"smtp-pw-{uuid.uuid4().hex}"
TOKEN = f"T0SECRET/B0SECRET/{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Servers:
    """What the loopback SMTP server and webhook receiver got."""

    smtp_port: int
    ca_file: Path
    webhook: str
    mails: list[Any] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)

    def clear(self) -> None:
        self.mails.clear()
        self.logins.clear()
        self.posts.clear()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """aiosmtpd with STARTTLS required before AUTH (a trustme CA) and a webhook receiver, both on loopback."""
    import trustme
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    http = HTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    got = Servers(_free_port(), ca_file, f"http://127.0.0.1:{http.server_port}/services/{TOKEN}")

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.posts.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http.RequestHandlerClass = Hook

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            import email
            import email.policy

            got.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password.decode() == PASSWORD
        got.logins.append((mechanism, data.login.decode()))
        return AuthResult(success=ok)

    smtp = Controller(Collect(), hostname="127.0.0.1", port=got.smtp_port, tls_context=server_ctx,
                      require_starttls=True, authenticator=authenticate, auth_require_tls=True)
    smtp.start()
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DFD_TEST_SLACK", got.webhook)
        mp.setenv("DFD_TEST_SMTP_PASSWORD", PASSWORD)
        yield got
    smtp.stop()
    http.shutdown()


def _alerts_section(s: Servers) -> dict[str, Any]:
    return {"email": {"enabled": True, "to": ["ml-team@example.org"], "host": "127.0.0.1", "port": s.smtp_port,
                      "security": "starttls", "username": "dfd-bot", "password_env": "DFD_TEST_SMTP_PASSWORD",
                      "ca_file": str(s.ca_file)},
            "slack": {"enabled": True, "webhook_env": "DFD_TEST_SLACK"}, "attempts": 2, "timeout_s": 5,
            "mlflow_ui_url": "http://127.0.0.1:5000", "allow_insecure": True}  # the receiver is http on loopback


def _project(root: Path, s: Servers) -> Path:
    shutil.copy(PROJECT / "params.yaml", root / "params.yaml")
    shutil.copy(TINY, root / "tiny.yaml")
    (root / "local.yaml").write_text(yaml.safe_dump({"data": {"root": "raw"}, "alerts": _alerts_section(s)}))
    # The gate-failure run trains two members: the alerts do not depend on how many (more only cost training time).
    (root / "strict.yaml").write_text(yaml.safe_dump({"evaluate": {"gate": {"min_auc": 1.01}},
                                                      "models": {"xception": None, "efficientnet": None,
                                                                 "sbi": None}}))
    (root / "no_data.yaml").write_text(yaml.safe_dump({"data": {"root": "raw_missing"}}))
    (root / "typo.yaml").write_text(yaml.safe_dump({"train": {"epochz": 1}}))
    return root


def _text(mail: Any) -> str:
    return mail.get_content().replace("\r\n", "\n")


def _secrets_absent(*blobs: bytes | str) -> None:
    for blob in blobs:
        data = blob.encode() if isinstance(blob, str) else blob
        for secret in (TOKEN.split("/")[-1], PASSWORD, "T0SECRET"):
            assert secret.encode() not in data


@pytest.mark.slow
def test_gate_failure_and_failed_runs_alert_once_on_each_channel_and_leak_no_secret(
        prefect_server: None, servers: Servers, tiny_project: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    import prefect.settings

    from dfd.commands.pipeline import print_summary
    from flows.pipeline import pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = _project(tiny_project, servers)
    caplog.set_level(logging.DEBUG)
    servers.clear()

    # 1. A whole run whose gate fails: one email (STARTTLS + login) and one webhook POST, naming what failed.
    summary = pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml", "strict.yaml"], root=str(root))
    assert not summary.promoted and summary.gate["failed"] == ["min_auc"]
    assert summary.alerts == {"email": "delivered", "slack": "delivered"}
    assert len(servers.mails) == 1 and len(servers.posts) == 1
    assert [login for _, login in servers.logins] == ["dfd-bot"]  # logged in once, after STARTTLS (required)
    mail, post = servers.mails[0], servers.posts[0]
    body = _text(mail)
    assert "gate failed" in mail["Subject"] and mail["To"] == "ml-team@example.org"
    auc = summary.metrics["auc"]
    assert f"auc: {auc:.4f} (threshold >= 1.0100)" in body or f"auc: {auc:.4f} (threshold 1.0100)" in body
    assert "Flow run " in body and "/runs/flow-run/" in body  # the Prefect UI link
    assert "http://127.0.0.1:5000/#/experiments/" in body and f"/runs/{summary.run_id}" in body  # the MLflow UI link
    assert body.strip() in post["text"] and post["path"] == f"/services/{TOKEN}"
    print_summary(summary, root)
    assert "alerts: email delivered, slack delivered" in capfd.readouterr().out

    # 2. A run that fails in a stage (ingest: the dataset root is gone): one more of each, saying why.
    servers.clear()
    with pytest.raises(Exception, match="raw_missing"):
        pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml", "no_data.yaml"], root=str(root))
    assert len(servers.mails) == 1 and len(servers.posts) == 1
    assert "failed" in servers.mails[0]["Subject"].lower() and "raw_missing" in _text(servers.mails[0])
    assert "raw_missing" in servers.posts[0]["text"] and "/runs/flow-run/" in servers.posts[0]["text"]

    # 3. A run whose params are what failed: the hook falls back to the files' own alerts sections.
    servers.clear()
    with pytest.raises(ConfigError, match="epochz"):
        pipeline(path="params.yaml", overrides=["tiny.yaml", "local.yaml", "typo.yaml"], root=str(root))
    assert len(servers.mails) == 1 and len(servers.posts) == 1
    assert "epochz" in _text(servers.mails[0])

    # The secrets are nowhere: logs, console, the MLflow store and its artifacts, our artifacts, Prefect's database.
    out = capfd.readouterr()
    _secrets_absent(caplog.text, out.out, out.err)
    stores = [root / "mlflow.db", *(p for d in ("mlruns", "artifacts") for p in (root / d).rglob("*") if p.is_file())]
    assert len(stores) > 10
    db = Path(prefect.settings.PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    stores += [p for p in db.parent.glob(db.name + "*")]
    for path in stores:
        _secrets_absent(path.read_bytes())
    assert summary.run_id.encode() in (root / "mlflow.db").read_bytes()  # the scan looked at the right store


def test_a_webhook_without_scheme_stops_the_run_in_preflight_without_echoing_it(
        tiny_project: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from dfd.cli import main

    secret = f"hooks.slack.com/services/{uuid.uuid4().hex}"
    monkeypatch.setenv("DFD_SLACK_WEBHOOK", secret)
    (tiny_project / "p.yaml").write_text(yaml.safe_dump({"data": {"root": str(tiny_project / "raw")},
                                                         "alerts": {"slack": {"enabled": True}}}))
    assert main(["--params", str(tiny_project / "p.yaml"), "run"]) == 2
    out = capfd.readouterr()
    assert "not an http(s) URL (value not shown)" in out.err and len(out.err.strip().splitlines()) == 1
    _secrets_absent(out.out, out.err)
    assert secret.split("/")[-1] not in out.out + out.err


def test_preflight_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match="host"):
        check_alert_settings(AlertParams(email=EmailAlertParams(enabled=True, to=["a@b.c"])))
    with pytest.raises(ConfigError, match=r"\$DFD_NOPE_PASSWORD is empty"):
        check_alert_settings(AlertParams(email=EmailAlertParams(enabled=True, to=["a@b.c"], host="h", username="u",
                                                                password_env="DFD_NOPE_PASSWORD")))
    with pytest.raises(ConfigError, match=r"\$DFD_NOPE_HOOK is empty"):
        check_alert_settings(AlertParams(slack=SlackAlertParams(enabled=True, webhook_env="DFD_NOPE_HOOK")))
    check_alert_settings(AlertParams())  # everything off: nothing to check


def test_a_failing_channel_is_logged_redacted_and_does_not_block_the_other(
        servers: Servers, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Channel level (the flow test covers delivery): a dead webhook and a scheme-less one never raise, never leak."""
    servers.clear()
    dead = f"http://127.0.0.1:{_free_port()}/services/{TOKEN}"
    email = EmailAlertParams(enabled=True, to=["a@example.org"], host="127.0.0.1", port=servers.smtp_port,
                             username="dfd-bot", password_env="DFD_TEST_SMTP_PASSWORD", ca_file=str(servers.ca_file))
    for url in (dead, dead.removeprefix("http://")):
        monkeypatch.setenv("DFD_TEST_DEAD", url)
        cfg = AlertParams(email=email, slack=SlackAlertParams(enabled=True, webhook_env="DFD_TEST_DEAD"), attempts=2,
                          timeout_s=2, allow_insecure=True)
        assert alert(cfg, "s", f"quoting {url} and {PASSWORD}") == {"email": "delivered", "slack": "failed"}
    assert len(servers.mails) == 2 and "[secret redacted]" in _text(servers.mails[0])
    assert "alert slack failed" in caplog.text
    _secrets_absent(caplog.text, *(m.as_string() for m in servers.mails))


def test_implicit_tls_and_a_wrong_password_fail_cleanly(servers: Servers, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DFD_TEST_WRONG", "not-" + PASSWORD)
    base = dict(enabled=True, to=["a@example.org"], host="127.0.0.1", port=servers.smtp_port, username="dfd-bot",
                ca_file=str(servers.ca_file))
    # The server speaks STARTTLS, not implicit TLS: an SSL client fails its handshake, reported not raised.
    ssl_cfg = AlertParams(email=EmailAlertParams(**base, security="ssl", password_env="DFD_TEST_SMTP_PASSWORD"),
                          attempts=1, timeout_s=2)
    assert send_email(ssl_cfg, "s", "b") == "failed"
    wrong = AlertParams(email=EmailAlertParams(**base, password_env="DFD_TEST_WRONG"), attempts=1, timeout_s=2)
    assert send_email(wrong, "s", "b") == "failed"
    assert send_slack(AlertParams(), "t") == "off"
    _secrets_absent(caplog.text)
    assert "not-" + PASSWORD not in caplog.text


@pytest.mark.parametrize(("alerts", "code"), [({"email": "delivered", "slack": "failed"}, 3),
                                              ({"email": "delivered", "slack": "off"}, 0)])
def test_the_summary_says_which_channels_delivered_and_a_lost_alert_exits_3(
        tiny_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        alerts: dict[str, str], code: int) -> None:
    """The CLI's side of a failed gate (the flow test above covers delivery): a stand-in flow returns the summary."""
    import flows.pipeline
    from dfd.cli import main

    gate = {"passed": False, "failed": ["auc"], "checks": [
        {"name": "auc", "value": 0.61, "threshold": 0.9, "passed": False, "detail": ""}]}
    summary = flows.pipeline.PipelineSummary("run1", "deepfake-ensemble", "2", False, "production", gate,
                                             {"auc": 0.61, "video_auc": 0.6, "eer": 0.4, "accuracy": 0.6},
                                             "sqlite:///mlflow.db", alerts)
    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **_: summary)
    (tiny_project / "p.yaml").write_text(yaml.safe_dump({"data": {"root": str(tiny_project / "raw")}}))
    # Test sizes (no ImageNet starts: the run's preflight would stop offline before the stand-in flow)
    assert main(["--params", str(PROJECT / "params.yaml"), "--override", str(TINY), "--override",
                 str(tiny_project / "p.yaml"), "run"]) == code
    out = capsys.readouterr().out
    assert "gate: FAILED (auc)" in out
    assert ("alerts: email delivered, slack FAILED (see the log above)" if code else
            "alerts: email delivered, slack off") in out


def test_the_webhook_can_come_from_a_prefect_secret_block(prefect_server: None, servers: Servers,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from prefect.blocks.system import Secret

    servers.clear()
    Secret(value=servers.webhook).save("dfd-test-webhook", overwrite=True)
    cfg = AlertParams(slack=SlackAlertParams(enabled=True, webhook_env="DFD_UNSET_HOOK",
                                             webhook_block="dfd-test-webhook"), allow_insecure=True)
    check_alert_settings(cfg)
    assert send_slack(cfg, "from a block") == "delivered"
    assert servers.posts == [{"path": f"/services/{TOKEN}", "text": "from a block"}]
    missing = AlertParams(slack=SlackAlertParams(enabled=True, webhook_block="dfd-no-such-block"))
    with pytest.raises(ConfigError, match="cannot read Prefect Secret block 'dfd-no-such-block'"):
        check_alert_settings(missing)
    assert send_slack(missing, "t") == "failed"
    _secrets_absent(caplog.text)


def test_the_message_names_each_failed_check_and_links_both_runs() -> None:
    from dfd.platform.alerts import failed_checks, gate_failure_message, mlflow_run_link

    gate_d = {"passed": False, "failed": ["auc", "significance"], "checks": [
        {"name": "auc", "value": 0.8123, "threshold": 0.9, "passed": False, "detail": "test split"},
        {"name": "eer", "value": 0.1, "threshold": 0.15, "passed": True, "detail": ""},
        {"name": "significance", "value": None, "threshold": "p<0.05", "passed": False, "detail": "no champion"}]}
    assert failed_checks(gate_d) == ["auc: 0.8123 (threshold 0.9000) - test split",
                                     "significance: n/a (threshold p<0.05) - no champion"]
    assert failed_checks({"passed": False, "failed": ["video_auc"]}) == ["video_auc"]  # no `checks`: the names
    link = mlflow_run_link("http://mlflow:5000/", "3", "abc", None)
    assert link == "http://mlflow:5000/#/experiments/3/runs/abc"
    assert mlflow_run_link("sqlite:///m.db", "3", "abc", "http://127.0.0.1:5000") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert mlflow_run_link("sqlite:///m.db", "3", "abc", None) == "run abc in sqlite:///m.db"
    subject, body = gate_failure_message(gate_d, flow_run="brave-fox", model_name="m", version="4", mlflow_link=link,
                                         prefect_link="http://prefect:4200/runs/flow-run/f1")
    assert "brave-fox" in subject and "m v4" in subject
    assert "  auc: 0.8123 (threshold 0.9000) - test split" in body and "eer" not in body
    assert link in body and "http://prefect:4200/runs/flow-run/f1" in body


def test_http_webhooks_are_refused_unless_allowed(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    """The webhook URL is the credential: over http:// it travels in clear, so it is refused before any request."""
    servers.clear()
    cfg = AlertParams(slack=SlackAlertParams(enabled=True, webhook_env="DFD_TEST_SLACK"), attempts=1, timeout_s=2)
    with pytest.raises(ConfigError, match=r"http://, which sends it in clear"):
        check_alert_settings(cfg)
    assert send_slack(cfg, "not sent") == "failed" and servers.posts == []
    allowed = cfg.model_copy(update={"allow_insecure": True})
    check_alert_settings(allowed)
    assert send_slack(allowed, "sent") == "delivered" and len(servers.posts) == 1
    _secrets_absent(caplog.text)


def test_plaintext_smtp_login_is_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A real SMTP server that accepts AUTH without TLS: dfd never logs in there unless `allow_insecure` says so."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    logins: list[str] = []
    mails: list[bytes] = []

    class Collect:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.append(envelope.content)
            return "250 OK"

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        logins.append(data.login.decode())
        return AuthResult(success=data.password.decode() == PASSWORD)

    port = _free_port()
    smtp = Controller(Collect(), hostname="127.0.0.1", port=port, authenticator=authenticate,
                      auth_require_tls=False)
    smtp.start()
    try:
        monkeypatch.setenv("DFD_TEST_PLAIN_PW", PASSWORD)
        email = EmailAlertParams(enabled=True, to=["a@example.org"], host="127.0.0.1", port=port, security="plain",
                                 username="dfd-bot", password_env="DFD_TEST_PLAIN_PW")
        cfg = AlertParams(email=email, attempts=1, timeout_s=5)
        with pytest.raises(ConfigError, match="password in clear"):
            check_alert_settings(cfg)
        assert send_email(cfg, "s", "b") == "failed" and logins == [] and mails == []
        assert send_email(cfg.model_copy(update={"allow_insecure": True}), "s", "b") == "delivered"
        assert logins == ["dfd-bot"] and len(mails) == 1
        # Without a login there is no secret to expose: plain stays allowed for an anonymous relay.
        anonymous = AlertParams(email=email.model_copy(update={"username": None}), attempts=1, timeout_s=5)
        check_alert_settings(anonymous)
        assert send_email(anonymous, "s", "b") == "delivered" and len(mails) == 2
    finally:
        smtp.stop()
    _secrets_absent(caplog.text)


def test_secrets_from_prefect_blocks_are_redacted_from_every_channel(prefect_server: None, servers: Servers,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The SMTP password lives in a Secret block (not the environment): a message quoting it, or quoting a URI with
    credentials, reaches the webhook redacted."""
    from prefect.blocks.system import Secret

    servers.clear()
    block_pw = PASSWORD  # the SMTP server's password, here only in the block ($DFD_SMTP_PASSWORD is not it)
    Secret(value=block_pw).save("dfd-test-smtp-pw", overwrite=True)
    email = EmailAlertParams(enabled=True, to=["a@example.org"], host="127.0.0.1", port=servers.smtp_port,
                             username="dfd-bot", password_block="dfd-test-smtp-pw", ca_file=str(servers.ca_file))
    cfg = AlertParams(email=email, slack=SlackAlertParams(enabled=True, webhook_env="DFD_TEST_SLACK"), attempts=1,
                      timeout_s=5, allow_insecure=True)
    body = f"the run logged {block_pw} and http://alice:{block_pw}x@mlflow:5000/#/runs/1"
    assert alert(cfg, "s", body) == {"email": "delivered", "slack": "delivered"}
    (post,), (mail,) = servers.posts, servers.mails
    for text in (post["text"], _text(mail)):
        assert block_pw not in text and "alice" not in text
        # Redacted by the alert's own redactor ([secret redacted]) or, first, by strip_credentials' known-secret pass.
        assert ("[secret redacted]" in text or f" {HIDDEN} " in text) and "http://mlflow:5000/#/runs/1" in text
    assert block_pw not in caplog.text
