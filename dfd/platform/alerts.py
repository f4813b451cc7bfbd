"""Alerts when a gate fails or a run fails or crashes: an email over SMTP and a Slack incoming-webhook message.

Every channel is off unless enabled in `alerts:`. Secrets (the SMTP password, the webhook URL) come from the
environment variable or the Prefect Secret block that params NAME, and never appear in a log line, an exception, a
return value or MLflow: every message about a channel passes through `redact`. Sending never raises: a failing
channel is logged and reported as "failed", so it can neither hide the failure it reports nor block the other one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import smtplib
import ssl
import urllib.request
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from tenacity import Retrying, stop_after_attempt, wait_fixed

from dfd.platform.config import AlertParams, EmailAlertParams, SlackAlertParams
from dfd.platform.errors import ConfigError
from dfd.platform.uris import safe_uri, strip_credentials

log = logging.getLogger(__name__)

Delivery = Literal["delivered", "failed", "off"]
REDACTED = "[secret redacted]"


def resolve_secret(env: str, block: str | None) -> str | None:
    """The secret held by the Prefect Secret block `block` (when named), else by the environment variable `env`."""
    if block:
        from prefect.blocks.system import Secret  # lazy: Prefect's client is only needed when a block is named

        value = Secret.load(block).get()
        return str(value) if value is not None else None
    return os.environ.get(env) or None


def _variants(secret: str) -> list[str]:
    """The secret and the parts of it a library may print on its own (a URL's path, query, credentials)."""
    out = [secret]
    parts = urlsplit(secret)
    if parts.netloc:
        out += [p for p in (parts.path, parts.query, parts.netloc + parts.path) if len(p) > 1]
        if "@" in parts.netloc:
            out.append(parts.netloc.rsplit("@", 1)[0])
    return sorted(set(out), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (and the parts of a secret URL a library may print) replaced by a marker."""
    for secret in secrets:
        if secret:
            for variant in _variants(secret):
                text = text.replace(variant, REDACTED)
    return text


def _retrying(cfg: AlertParams) -> Retrying:
    # Bounded: `attempts` tries a second apart, each bounded by timeout_s, so a dead channel costs seconds.
    return Retrying(stop=stop_after_attempt(cfg.attempts), wait=wait_fixed(1), reraise=True)


def _send_email(cfg: EmailAlertParams, password: str | None, subject: str, body: str, timeout: float) -> None:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = subject, cfg.sender, ", ".join(cfg.to)
    msg.set_content(body)
    context = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host or "", cfg.port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(cfg.host or "", cfg.port, timeout=timeout)
    with smtp:
        if cfg.security == "starttls":
            smtp.starttls(context=context)
        if cfg.username:
            smtp.login(cfg.username, password or "")
        smtp.send_message(msg)


def _check_webhook(url: str, source: str, allow_insecure: bool = False) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # Never echo the value: it is the secret.
        raise ConfigError(f"alerts.slack: the webhook URL from {source} is not an http(s) URL (value not shown)",
                          "it must look like https://hooks.slack.com/services/...")
    if parts.scheme == "http" and not allow_insecure:
        # The URL is the credential: over http anyone on the path can read it and post as the team.
        raise ConfigError(f"alerts.slack: the webhook URL from {source} is http://, which sends it in clear",
                          "use its https:// URL, or set alerts.allow_insecure: true for a trusted network")


def _check_smtp_security(cfg: EmailAlertParams, allow_insecure: bool) -> None:
    if cfg.security == "plain" and cfg.username and not allow_insecure:
        raise ConfigError("alerts.email: security: plain with a username would send the SMTP password in clear",
                          "use security: starttls or ssl, or set alerts.allow_insecure: true for a trusted relay")


def _post_slack(url: str, text: str, timeout: float) -> None:
    req = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # HTTPError (4xx/5xx) raises
        if not 200 <= resp.status < 300:
            raise OSError(f"webhook answered HTTP {resp.status}")


def _source(env: str, block: str | None) -> str:
    return f"Prefect Secret block '{block}'" if block else f"${env}"


def _deliver(name: str, send: Callable[[], None], cfg: AlertParams, secrets: list[str | None]) -> Delivery:
    try:
        for attempt in _retrying(cfg):
            with attempt:
                send()
    except Exception as exc:  # any failure of a channel is reported, never raised
        log.error("alert %s failed: %s", name, redact(f"{type(exc).__name__}: {exc}", secrets))
        return "failed"
    log.info("alert %s delivered", name)
    return "delivered"


def send_email(cfg: AlertParams, subject: str, body: str) -> Delivery:
    """Send one email to `alerts.email.to`; "off" when disabled, "failed" (logged, redacted) when it cannot."""
    email = cfg.email
    if not email.enabled:
        return "off"
    try:
        _check_smtp_security(email, cfg.allow_insecure)
        password = resolve_secret(email.password_env, email.password_block) if email.username else None
    except ConfigError as exc:
        log.error("alert email failed: %s", exc)
        return "failed"
    except Exception as exc:  # an unreadable Secret block is a failed channel, not a crash
        log.error("alert email failed: cannot read %s: %s", _source(email.password_env, email.password_block),
                  type(exc).__name__)
        return "failed"
    return _deliver("email", lambda: _send_email(email, password, subject, body, cfg.timeout_s), cfg, [password])


def send_slack(cfg: AlertParams, text: str) -> Delivery:
    """Post `text` to the Slack incoming webhook; "off" when disabled, "failed" (logged, redacted) when it cannot."""
    slack = cfg.slack
    if not slack.enabled:
        return "off"
    url: str | None = None
    try:
        url = resolve_secret(slack.webhook_env, slack.webhook_block)
        if not url:
            raise ConfigError(f"alerts.slack: {_source(slack.webhook_env, slack.webhook_block)} is not set")
        _check_webhook(url, _source(slack.webhook_env, slack.webhook_block), cfg.allow_insecure)
    except Exception as exc:
        log.error("alert slack failed: %s", redact(f"{type(exc).__name__}: {exc}", [url]))
        return "failed"
    return _deliver("slack", lambda: _post_slack(url, text, cfg.timeout_s), cfg, [url])


def alert(cfg: AlertParams, subject: str, body: str) -> dict[str, Delivery]:
    """Send `subject`/`body` on every enabled channel, each independently; which delivered, failed or is off.

    The text is redacted first: a failure message quoting a secret (from the environment or a Prefect Secret block)
    or a URI with credentials must not carry it to any channel.
    """
    known = known_secrets(cfg)
    subject, body = redact(strip_credentials(subject), known), redact(strip_credentials(body), known)
    return {"email": send_email(cfg, subject, body), "slack": send_slack(cfg, f"*{subject}*\n{body}")}


def known_secrets(cfg: AlertParams) -> list[str | None]:
    """Every alert secret this configuration can reach: both environment variables and any named Secret block.

    A block that cannot be read contributes nothing (its channel reports the failure); the values are only used to
    redact, never shown.
    """
    known: list[str | None] = [os.environ.get(cfg.email.password_env), os.environ.get(cfg.slack.webhook_env)]
    for block in (cfg.email.password_block, cfg.slack.webhook_block):
        if block:
            with contextlib.suppress(Exception):  # unreadable: the channel using it fails and says so
                known.append(resolve_secret("", block))
    return known


def check_alert_settings(cfg: AlertParams) -> None:
    """Preflight: every enabled channel has what it needs, before any work (never echoes a secret).

    Raises:
        ConfigError: Naming the setting that is missing or malformed.
    """
    email, slack = cfg.email, cfg.slack
    if email.enabled:
        if not email.host:
            raise ConfigError("alerts.email is enabled but alerts.email.host is not set")
        if not email.to or not all("@" in a for a in email.to):
            raise ConfigError("alerts.email.to must list at least one address (name@domain)")
        if email.ca_file and not Path(email.ca_file).is_file():
            raise ConfigError(f"alerts.email.ca_file not found: {email.ca_file}")
        _check_smtp_security(email, cfg.allow_insecure)
        if email.username and not email.password_block and not os.environ.get(email.password_env):
            raise ConfigError(f"alerts.email.username is set but ${email.password_env} is empty",
                              "export the SMTP password there, or name a Prefect Secret block in password_block")
    if slack.enabled:
        source = _source(slack.webhook_env, slack.webhook_block)
        try:
            url = resolve_secret(slack.webhook_env, slack.webhook_block)
        except Exception as exc:  # a missing block or unreachable server, named without the value
            raise ConfigError(f"alerts.slack: cannot read {source}: {type(exc).__name__}") from None
        if not url:
            raise ConfigError(f"alerts.slack is enabled but {source} is empty",
                              "set it to the incoming-webhook URL, or disable alerts.slack")
        _check_webhook(url, source, cfg.allow_insecure)


def params_alerts_fallback(files: list[Path]) -> AlertParams:
    """The `alerts:` sections of raw params files merged on their own: how the crash hook still alerts when the
    rest of the params is what failed to load. Falls back to `alerts_from_env()` when these do not validate either.
    """
    merged: dict[str, Any] = {}
    try:
        for f in files:
            data = yaml.safe_load(f.read_text()) if f.is_file() else None
            section = data.get("alerts") if isinstance(data, dict) else None
            if isinstance(section, dict):
                merged = _merge(merged, section)
        return AlertParams.model_validate(merged)
    except Exception:  # broken YAML or a bad alerts section: the environment is the last resort
        return alerts_from_env()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def alerts_from_env() -> AlertParams:
    """Alert settings from the environment alone: Slack when $DFD_SLACK_WEBHOOK is set, email when
    $DFD_ALERT_EMAIL_TO (comma-separated) and $DFD_SMTP_HOST are (port $DFD_SMTP_PORT, security
    $DFD_SMTP_SECURITY, login $DFD_SMTP_USER with $DFD_SMTP_PASSWORD)."""
    env = os.environ
    to = [a.strip() for a in env.get("DFD_ALERT_EMAIL_TO", "").split(",") if a.strip()]
    email = EmailAlertParams(enabled=bool(to and env.get("DFD_SMTP_HOST")), to=to, host=env.get("DFD_SMTP_HOST"),
                             port=int(env.get("DFD_SMTP_PORT", "587")),
                             security=env.get("DFD_SMTP_SECURITY", "starttls"),  # type: ignore[arg-type]
                             username=env.get("DFD_SMTP_USER") or None)
    return AlertParams(email=email, slack=SlackAlertParams(enabled=bool(env.get("DFD_SLACK_WEBHOOK"))))


def mlflow_run_link(tracking_uri: str, experiment_id: str | None, run_id: str | None, ui_url: str | None) -> str:
    """A link to the run in the MLflow UI when there is one (an http tracking server or `alerts.mlflow_ui_url`)."""
    if not run_id:
        return "no MLflow run was started"
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else ui_url
    if base and experiment_id:
        return f"{safe_uri(base).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {safe_uri(tracking_uri)}"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def failed_checks(gate: dict[str, Any]) -> list[str]:
    """One line per failed check with its value and threshold; the bare names when the gate has no `checks`."""
    checks = gate.get("checks")
    if not checks:
        return [str(name) for name in gate.get("failed", [])] or ["(the gate gave no reason)"]
    lines = []
    for c in checks:
        if c.get("passed"):
            continue
        name = c.get("name") or c.get("metric", "?")
        op = f"{c['op']} " if c.get("op") else ""
        detail = f" - {c['detail']}" if c.get("detail") else ""
        lines.append(f"{name}: {_num(c.get('value'))} (threshold {op}{_num(c.get('threshold'))}){detail}")
    return lines


def gate_failure_message(gate: dict[str, Any], *, flow_run: str, model_name: str, version: str, mlflow_link: str,
                         prefect_link: str) -> tuple[str, str]:
    """Subject and body of a gate-failure alert."""
    subject = f"[dfd] gate failed: {model_name} v{version} not promoted ({flow_run})"
    body = "\n".join([f"Flow run {flow_run}: the evaluation gate failed; {model_name} v{version} was registered "
                      "but not promoted.", "", "Failed checks:", *(f"  {line}" for line in failed_checks(gate)), "",
                      f"MLflow run:  {mlflow_link}", f"Prefect run: {prefect_link}", ""])
    return subject, body


def run_failure_message(*, flow_run: str, state: str, reason: str, mlflow_link: str,
                        prefect_link: str) -> tuple[str, str]:
    """Subject and body of a failed- or crashed-run alert."""
    subject = f"[dfd] pipeline run {flow_run} {state.lower()}"
    body = "\n".join([f"Flow run {flow_run} ended {state}:", f"  {reason}", "", f"MLflow run:  {mlflow_link}",
                      f"Prefect run: {prefect_link}", ""])
    return subject, body
