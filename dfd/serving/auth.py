"""`dfd serve` access: a bearer token from the environment, checked before any body is read; exposure rules.

TLS is not here: a reverse proxy (Caddy, nginx, a cloud load balancer) terminates it in front of `dfd serve`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dfd.platform.errors import DfdError

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # what a load balancer probes without credentials; it says nothing secret
MIN_TOKEN_CHARS = 16  # a token a person can type from memory is one an attacker can guess


def token_from_env(env_name: str) -> str | None:
    """The bearer token in the environment variable `env_name`; None when unset or empty.

    Raises:
        DfdError: The token is set but shorter than MIN_TOKEN_CHARS.
    """
    token = os.environ.get(env_name, "").strip()
    if not token:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise DfdError(f"the token in ${env_name} is shorter than {MIN_TOKEN_CHARS} characters",
                       "generate one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return token


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, token: str | None, insecure: bool, env_name: str) -> None:
    """Refuse to listen beyond loopback without a token, unless the operator said `--insecure`.

    Raises:
        DfdError: A non-loopback `host`, no token and not `insecure` (the CLI prints one line, exit 2).
    """
    if token or is_loopback(host):
        return
    if not insecure:
        raise DfdError(f"refusing to serve on {host} without a token",
                       f"set ${env_name} (every route but /health then needs `Authorization: Bearer <token>`), "
                       "bind to 127.0.0.1 behind a proxy, or pass --insecure")
    log.warning("serving on %s WITHOUT authentication (--insecure): anyone who reaches it can score files", host)


def _digest(value: bytes) -> bytes:
    # Compare digests, not the strings: equal lengths, so the comparison time says nothing about the token's length.
    return hashlib.sha256(value).digest()


class BearerAuth:
    """ASGI middleware: every HTTP route but OPEN_PATHS needs `Authorization: Bearer <token>`, else a 401.

    It answers before the app runs, so an unauthenticated client never gets its body read.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._want = _digest(token.encode())

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries the token (a constant-time comparison)."""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(_digest(given.strip()), self._want)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        body: dict[str, Any] = {"error": "missing or wrong bearer token", "reason": "unauthorized",
                                "detail": "send `Authorization: Bearer <token>`"}
        await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
