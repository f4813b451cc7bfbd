"""One helper for every URI the product writes down (a deployment manifest, a tag, an alert, a log line).

A user may put credentials in a URI (`http://user:pass@mlflow:5000`, `postgresql://dfd:pw@db/mlflow`, a presigned
`?X-Amz-Signature=...`); what is written must still say where, never with what key.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
# Query parameters that carry a credential (AWS presigned URLs, tokens, passwords in DSNs); compared lower-case.
_SECRET_QUERY = re.compile(r"pass|secret|token|signature|credential|key|auth|sig$|session", re.IGNORECASE)
# `scheme://user[:password]@` anywhere in free text (a log line or an exception message quoting a URI).
_USERINFO_IN_TEXT = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]+@")


def safe_uri(uri: str) -> str:
    """`uri` without credentials: the user-info part and the values of secret-looking query parameters go.

    Plain paths and URIs without credentials come back unchanged; what cannot be parsed comes back with any
    `user:password@` removed all the same.

    Examples:
        >>> safe_uri("http://alice:s3cret@mlflow:5000/api?token=abc&x=1")
        'http://mlflow:5000/api?token=%2A%2A%2A&x=1'
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return strip_credentials(uri)
    if not parts.scheme or not parts.netloc:
        return strip_credentials(uri)
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, HIDDEN if _SECRET_QUERY.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def strip_credentials(text: str) -> str:
    """Free text with every `scheme://user:password@` reduced to `scheme://` (for messages that quote URIs)."""
    return _USERINFO_IN_TEXT.sub(lambda m: m["scheme"], text)
