"""`dfd serve` access: bearer tokens from the environment, checked before any body is read; a tokenless server
for this machine only; a rate limit per client; exposure rules.

TLS is not here: a reverse proxy (Caddy, nginx, a cloud load balancer) terminates it in front of `dfd serve`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time
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
    tokens = tokens_from_env(env_name)
    return tokens[0] if tokens else None


def tokens_from_env(*env_names: str) -> list[str]:
    """Every bearer token in the environment variables `env_names` (each may hold several, comma-separated: the
    old and the new while one is rotated); empty when none is set.

    Raises:
        DfdError: A token shorter than MIN_TOKEN_CHARS.
    """
    tokens: list[str] = []
    for name in env_names:
        for token in (t.strip() for t in os.environ.get(name, "").split(",")):
            if token and len(token) < MIN_TOKEN_CHARS:
                raise DfdError(f"a token in ${name} is shorter than {MIN_TOKEN_CHARS} characters",
                               "generate one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
            if token and token not in tokens:
                tokens.append(token)
    return tokens


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
                       f"set ${env_name} (every route but /health then needs `Authorization: Bearer <token>`); "
                       "behind a reverse proxy too a token is required: without one the server answers only "
                       "loopback Host headers and refuses proxied (Forwarded) requests. --insecure serves anyone")
    log.warning("serving on %s WITHOUT authentication (--insecure): anyone who reaches it can score files", host)


def _digest(value: bytes) -> bytes:
    # Compare digests, not the strings: equal lengths, so the comparison time says nothing about the token's length.
    return hashlib.sha256(value).digest()


_PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip"})


def _host_is_loopback(value: bytes) -> bool:
    """A Host header naming this machine: `localhost`, 127.0.0.0/8 or [::1], with any port."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    return is_loopback(host)


class Gate:
    """ASGI middleware in front of every route: who may ask, and how often.

    - With tokens: every HTTP route but OPEN_PATHS needs `Authorization: Bearer <one of them>`, else 401.
    - Without (a server for this machine only): the Host header must be loopback (a web page that rebinds its DNS
      name to 127.0.0.1 sends its own name) and requests a proxy forwarded (`Forwarded`, `X-Forwarded-For`, ...)
      are refused: a proxy in front of a tokenless server would open it to the proxy's clients.
    - `rate_per_minute` requests a minute per client (its token, else its address), else 429 with Retry-After.
    - Only HTTP and the lifespan pass: a websocket is closed before the app sees it.

    Each refusal is answered before the app runs, so a refused client never gets its body read.

    Args:
        app: The app.
        tokens: Accepted bearer tokens; empty for a local-only server.
        local_only: Without tokens, apply the loopback rules (False: `--insecure`, the operator's choice).
        rate_per_minute: 0 for no rate limit.
    """

    def __init__(self, app: ASGIApp, tokens: list[str], local_only: bool = True, rate_per_minute: int = 0) -> None:
        self.app = app
        self._want = [_digest(t.encode()) for t in tokens]
        self.local_only = local_only and not tokens
        self.limiter = RateLimiter(rate_per_minute) if rate_per_minute else None

    def token_of(self, scope: Scope) -> bytes | None:
        """The digest of the accepted token the request carries (constant-time against each), else None."""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                got = _digest(given.strip())
                hits = [hmac.compare_digest(got, want) for want in self._want]  # all compared: no early exit
                return got if scheme.lower() == b"bearer" and any(hits) else None
        return None

    def _local_refusal(self, scope: Scope) -> str | None:
        headers = scope.get("headers", [])
        if any(name in _PROXY_HEADERS for name, _ in headers):
            return "a proxied request (Forwarded/X-Forwarded-For) reached a server without a token"
        host = next((v for n, v in headers if n == b"host"), b"")
        if not _host_is_loopback(host):
            return "a server without a token answers loopback Host headers only"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets and anything newer: nothing here speaks them
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        client: bytes | str | None = None
        if self._want:
            client = self.token_of(scope)
            if client is None and scope["path"] not in OPEN_PATHS:
                await _refuse(scope, receive, send, 401, "missing or wrong bearer token", "unauthorized",
                              "send `Authorization: Bearer <token>`", {"WWW-Authenticate": "Bearer"})
                return
        elif self.local_only and (why := self._local_refusal(scope)) is not None:
            await _refuse(scope, receive, send, 403, why, "forbidden",
                          "a token (serve.auth_token_env) is what lets other machines and proxies in", {})
            return
        if self.limiter is not None and scope["path"] not in OPEN_PATHS:
            key = client or (scope.get("client") or ("?",))[0]
            if (wait := self.limiter.take(key)) > 0:
                await _refuse(scope, receive, send, 429, "too many requests", "rate_limited",
                              f"limit serve.rate_limit_per_minute={self.limiter.rate}",
                              {"Retry-After": str(math.ceil(wait))})
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, error: str, reason: str, detail: str,
                  headers: dict[str, str]) -> None:
    body: dict[str, Any] = {"error": error, "reason": reason, "detail": detail}
    # Connection: close: the refused request's body is never read, not even drained to keep the connection alive.
    await JSONResponse(body, status, headers={**headers, "Connection": "close"})(scope, receive, send)


class RateLimiter:
    """A token bucket per client: `rate` requests a minute, bursts up to `rate`; idle clients are forgotten.

    Args:
        rate: Requests a minute.
        max_clients: Buckets kept; past it the fullest (idlest) are dropped, so spoofed keys cannot fill memory.
    """

    def __init__(self, rate: int, max_clients: int = 10_000) -> None:
        self.rate, self.max_clients = rate, max_clients
        self._buckets: dict[Any, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: Any, now: float | None = None) -> float:
        """0 when `key` may go ahead (and one request is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.get(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - at) * self.rate / 60.0)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) * 60.0 / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            for k in [k for k, (t, _) in self._buckets.items() if t >= self.rate - 1][: len(self._buckets) // 2]:
                del self._buckets[k]
        return 0.0
