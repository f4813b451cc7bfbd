"""Who wrote a deployment: an HMAC-SHA256 signature over its pointer, which names the current version's manifest.

The key comes from `$DFD_DEPLOY_KEY` and is held by whoever deploys (`dfd deploy-model`) and whoever loads
(`dfd serve --from`, `dfd deploy-model --verify`); it is never written to the target. The pointer records the
SHA-256 of the current version's manifest, and the manifest records the SHA-256 of every file, so one signature
covers every byte that is loaded. Someone who can write the target but does not hold the key can add a version with
a matching manifest and pointer (the ids are plain hashes), but cannot sign it: it is refused before anything of it
is loaded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from dfd.serving.deploy_store import DeployError

KEY_ENV = "DFD_DEPLOY_KEY"
# 32 characters: 128 bits as hex (`secrets.token_hex(16)`) at the least; a shorter key could be found offline from
# one signed pointer by trying candidates.
MIN_KEY_CHARS = 32
SCHEME = "hmac-sha256"
_HOW = f"set ${KEY_ENV} to a long random secret (`python -c 'import secrets; print(secrets.token_hex(32))'`)"


def deploy_key(required: bool = True) -> bytes | None:
    """The signing key from `$DFD_DEPLOY_KEY`; None when unset and not `required`.

    Raises:
        DeployError: Unset while `required`, or shorter than `MIN_KEY_CHARS`.
    """
    key = os.environ.get(KEY_ENV, "")
    if not key:
        if required:
            raise DeployError(f"${KEY_ENV} is not set: deployments are signed, and checked against the signature",
                              f"{_HOW}, the same one where you deploy and where you serve")
        return None
    if len(key) < MIN_KEY_CHARS:
        raise DeployError(f"${KEY_ENV} has {len(key)} characters: at least {MIN_KEY_CHARS} are needed", _HOW)
    return key.encode()


def manifest_digest(raw: bytes) -> str:
    """The SHA-256 of a manifest's bytes as stored (what the signed pointer names)."""
    return hashlib.sha256(raw).hexdigest()


def _mac(pointer: dict[str, Any], key: bytes) -> str:
    body = json.dumps({k: v for k, v in pointer.items() if k != "signature"}, sort_keys=True,
                      separators=(",", ":")).encode()
    return f"{SCHEME}:{hmac.new(key, body, hashlib.sha256).hexdigest()}"


def sign(pointer: dict[str, Any], manifest_raw: bytes, key: bytes) -> dict[str, Any]:
    """`pointer` with the current version's manifest digest and the signature over both."""
    signed = {**pointer, "manifest_sha256": manifest_digest(manifest_raw)}
    return {**signed, "signature": _mac(signed, key)}


def is_signed(pointer: dict[str, Any]) -> bool:
    return "signature" in pointer


def verify(pointer: dict[str, Any], key: bytes, where: str) -> None:
    """Check the pointer's signature with `key`.

    Raises:
        DeployError: Unsigned, or signed with another key or altered since.
    """
    if not is_signed(pointer):
        raise DeployError(f"{where} is not signed (deployed before dfd signed deployments, or written by hand)",
                          f"check it, then sign it with `dfd deploy-model --to {where} --migrate`, or pass "
                          "--allow-unsigned")
    if not isinstance(pointer.get("manifest_sha256"), str) or not hmac.compare_digest(
            str(pointer["signature"]), _mac(pointer, key)):
        raise DeployError(f"{where}: the pointer's signature does not match ${KEY_ENV}",
                          "it was written without the key (altered), or with another key: deploy again")


def check_manifest(pointer: dict[str, Any], manifest_raw: bytes, where: str) -> None:
    """The copied manifest is the one the signed pointer names."""
    if not hmac.compare_digest(pointer["manifest_sha256"], manifest_digest(manifest_raw)):
        raise DeployError(f"{where}: the manifest of version {pointer['current']} is not the one that was signed",
                          "the deployment was altered: deploy again")
