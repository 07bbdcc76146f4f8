"""Request authentication exactly as Orderly documents it (docs/exchange.md §2).

The signed message is ``<timestamp ms><METHOD><path incl. ?query><raw body>``; it is rebuilt
from the bytes actually received, so a tampered body or query fails. Signatures are accepted
in standard base64 and base64url, padded or not, because the official clients disagree.

Failure codes (unconfirmed upstream; the likely mapping from §2/§3): a missing or malformed
header, a bad signature or a timestamp outside the window -> -1001 (HTTP 401); an unknown,
expired or foreign key, or a key without the ``trading`` scope a write needs -> -1002 (401).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from guardbot.sim.records import ApiKey

TIMESTAMP_WINDOW_MS = 300_000


class AuthFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=65536)
def public_key(orderly_key: str) -> Ed25519PublicKey:
    """The ed25519 public key inside ``ed25519:<base58>`` (cached: keys are reused)."""
    try:
        raw = base58.b58decode(orderly_key.removeprefix("ed25519:"))
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise AuthFailure(-1001, "orderly-key is not a valid ed25519 key") from None


def decode_signature(signature: str) -> bytes:
    """Standard or URL-safe base64, with or without padding."""
    text = signature.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailure(-1001, "signature is not base64") from None
    if len(raw) != 64:
        raise AuthFailure(-1001, "signature must be 64 bytes")
    return raw


def verify(orderly_key: str, signature: str, message: bytes) -> None:
    try:
        public_key(orderly_key).verify(decode_signature(signature), message)
    except InvalidSignature:
        raise AuthFailure(-1001, "signature verification failed") from None


def check_timestamp(timestamp: object, now_ms: int) -> str:
    """The timestamp as the exact text signed; must be within 300 s of the server clock."""
    text = str(timestamp)
    if isinstance(timestamp, bool) or not text.isdigit():
        raise AuthFailure(-1001, "orderly-timestamp must be milliseconds since the epoch")
    if abs(int(text) - now_ms) > TIMESTAMP_WINDOW_MS:
        raise AuthFailure(-1001, "orderly-timestamp is outside the 300 s window")
    return text


def check_key(keys: Mapping[str, ApiKey], orderly_key: str, account_id: str, now_ms: int) -> ApiKey:
    key = keys.get(orderly_key)
    if key is None or key.account_id != account_id.lower():
        raise AuthFailure(-1002, "orderly key is not registered to this account")
    if key.expires_ms is not None and key.expires_ms <= now_ms:
        raise AuthFailure(-1002, "orderly key has expired")
    return key


@dataclass(frozen=True, slots=True)
class Caller:
    account_id: str
    key: ApiKey


def authenticate_request(
    keys: Mapping[str, ApiKey],
    headers: Mapping[str, str],
    method: str,
    raw_path: str,
    body: bytes,
    now_ms: int,
    need_trading: bool,
) -> Caller:
    """Check one REST request's ``orderly-*`` headers against the raw path and body."""
    values = {}
    for name in ("orderly-timestamp", "orderly-account-id", "orderly-key", "orderly-signature"):
        value = headers.get(name)
        if not value:
            raise AuthFailure(-1001, f"missing header {name}")
        values[name] = value
    timestamp = check_timestamp(values["orderly-timestamp"], now_ms)
    message = f"{timestamp}{method.upper()}{raw_path}".encode() + body
    verify(values["orderly-key"], values["orderly-signature"], message)
    key = check_key(keys, values["orderly-key"], values["orderly-account-id"], now_ms)
    if need_trading and "trading" not in key.scopes:
        raise AuthFailure(-1002, "orderly key lacks the trading scope")
    return Caller(key.account_id, key)


def authenticate_ws(
    keys: Mapping[str, ApiKey],
    account_id: str,
    orderly_key: object,
    sign: object,
    timestamp: object,
    now_ms: int,
) -> Caller:
    """Private WS auth: only the timestamp string is signed (§2, [D:ws/authentication])."""
    if not isinstance(orderly_key, str) or not isinstance(sign, str) or timestamp is None:
        raise AuthFailure(-1001, "auth failed")
    text = check_timestamp(timestamp, now_ms)
    verify(orderly_key, sign, text.encode())
    key = check_key(keys, orderly_key, account_id, now_ms)
    return Caller(key.account_id, key)
