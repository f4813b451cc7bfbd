"""Alerts when a gate fails or a run crashes: email over SMTP and a Slack incoming webhook.

Both are off unless configured: `alerts.email_to` + `alerts.smtp_host` in params, and the webhook URL in the
environment variable named by `alerts.slack_webhook_env` (a secret, so never in params or MLflow). SMTP credentials,
when the server needs them, come from DFD_SMTP_USER / DFD_SMTP_PASSWORD.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import urllib.request
from email.message import EmailMessage

from dfd.platform.config import AlertParams

log = logging.getLogger(__name__)


def send_email(cfg: AlertParams, subject: str, body: str) -> bool:
    """Send one plain-text email to `cfg.email_to`; False (logged, never raised) when it cannot be sent."""
    if not cfg.email_to or not cfg.smtp_host:
        return False
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = subject, os.environ.get("DFD_ALERT_FROM", "dfd@localhost"), ", ".join(
        cfg.email_to)
    msg.set_content(body)
    try:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=10) as smtp:
            user, password = os.environ.get("DFD_SMTP_USER"), os.environ.get("DFD_SMTP_PASSWORD")
            if user and password:
                smtp.starttls()
                smtp.login(user, password)
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        log.error("alert email to %s via %s:%s failed: %s", cfg.email_to, cfg.smtp_host, cfg.smtp_port, exc)
        return False
    return True


def send_slack(cfg: AlertParams, text: str) -> bool:
    """Post `text` to the Slack incoming webhook named by the environment; False when unset or failing."""
    url = os.environ.get(cfg.slack_webhook_env)
    if not url:
        return False
    req = urllib.request.Request(url, data=json.dumps({"text": text}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return 200 <= resp.status < 300
    except OSError as exc:
        log.error("Slack alert failed (%s): %s", cfg.slack_webhook_env, exc)
        return False


def alert(cfg: AlertParams, subject: str, body: str) -> dict[str, bool]:
    """Send `subject`/`body` on every configured channel; returns which ones delivered."""
    return {"email": send_email(cfg, subject, body), "slack": send_slack(cfg, f"*{subject}*\n{body}")}


def gate_failure_message(gate: dict, model_name: str, version: str, run_id: str) -> tuple[str, str]:
    """Subject and body of a gate-failure alert."""
    lines = [f"{c.get('name', c.get('metric'))}: {c['detail']}" if "detail" in c  # gate.json format D
             else f"{c['metric']}: {c['value']:.4f} (needs {c['op']} {c['threshold']})"
             for c in gate["checks"] if not c["passed"]]
    subject = f"[dfd] gate failed: {model_name} v{version} not promoted"
    body = "The evaluation gate failed on the test split:\n" + "\n".join(lines) + f"\nMLflow run: {run_id}\n"
    return subject, body
