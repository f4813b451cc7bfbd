"""One helper for every URI the product writes down (a deployment manifest, a tag, an alert, a log line).

A user may put credentials in a URI (`http://user:pass@mlflow:5000`, `postgresql://dfd:pw@db/mlflow`, a presigned
`?X-Amz-Signature=...`); what is written must still say where, never with what key.

The user-info part runs from `://` to the LAST `@`: passwords hold `/`, `#`, `?` and `@` unescaped often enough
(base64 keys hold `/` and `+`; `postgresql://u:ab/cd+ef==@host` is what a user pastes), and a URI parser then ends the
host at the first of them and leaves the rest of the password in the path. The price: an `@` in a path or query
(`s3://b/a@2x.png`) drops what comes before it from what is written, never a secret. On top of that, the values of
the secrets the product knows of (the environment variables it reads them from) are replaced wherever they appear.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters that carry a credential (AWS presigned URLs, tokens, passwords in DSNs); compared lower-case.
_SECRET_QUERY = re.compile(r"pass|secret|token|signature|credential|key|auth|sig$|session", re.IGNORECASE)
# `scheme://` then everything up to the last `@` of the same whitespace-free run: the user-info part.
_SCHEME = r"\b[A-Za-z][A-Za-z0-9+.\-]*://"
_USERINFO_IN_TEXT = re.compile(rf"(?P<scheme>{_SCHEME})[^\s]*@")
_USERINFO = re.compile(rf"^(?P<scheme>{_SCHEME})(?P<info>.*)@")
# Environment variables whose values are secrets wherever they turn up: the ones the product and the tools it drives
# read (DFD_SERVE_TOKEN, DFD_DEPLOY_KEY, DFD_SMTP_PASSWORD, DFD_SLACK_WEBHOOK, MLFLOW_TRACKING_PASSWORD,
# AWS_SECRET_ACCESS_KEY, PREFECT_API_AUTH_STRING, ...) all match by name, so do names a user configures in the same
# style (`alerts.smtp.password_env`).
_SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|WEBHOOK|AUTH_STRING|CREDENTIAL", re.IGNORECASE)
# Shorter values are left alone: replacing a 3-character "secret" everywhere garbles text and hides nothing real (the
# product's own secrets are longer: a serve token >= 16 characters, a deploy key >= 32).
MIN_SECRET_CHARS = 8


def known_secrets() -> list[str]:
    """The values (and their URL-encoded forms) of the secret environment variables set now, longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= MIN_SECRET_CHARS}
    values |= {quote(v, safe="") for v in values}
    return sorted(values, key=len, reverse=True)


def _hide_secrets(text: str) -> str:
    for value in known_secrets():
        text = text.replace(value, HIDDEN)
    return text


def safe_uri(uri: str) -> str:
    """`uri` without credentials: the user-info part (`://` to the last `@`), the values of secret-looking query
    parameters, and any known secret value go.

    Plain paths and URIs without credentials come back unchanged.

    Examples:
        >>> safe_uri("http://alice:s3cret@mlflow:5000/api?token=abc&x=1")
        'http://mlflow:5000/api?token=%2A%2A%2A&x=1'
        >>> safe_uri("postgresql://u:ab/cd+ef==@db/mlflow")
        'postgresql://db/mlflow'
    """
    uri = _USERINFO.sub(lambda m: m["scheme"], uri, count=1)
    try:
        parts = urlsplit(uri)
    except ValueError:
        return strip_credentials(uri)
    if not parts.scheme or not parts.netloc or not parts.query:
        return _hide_secrets(uri)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, HIDDEN if _SECRET_QUERY.search(k) else v) for k, v in pairs])
    return _hide_secrets(urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment)))


def strip_credentials(text: str) -> str:
    """Free text with every `scheme://user:password@` reduced to `scheme://` (up to the last `@` before the next
    whitespace) and every known secret value replaced (for messages that quote URIs)."""
    return _hide_secrets(_USERINFO_IN_TEXT.sub(lambda m: m["scheme"], text))
