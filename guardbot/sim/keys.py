"""Orderly API keys: ed25519 key pairs spelled the way Orderly spells them (docs/exchange.md §2).

The public key is ``ed25519:<base58 32-byte public key>``; the secret is
``ed25519:<base58 32-byte seed>``. Signatures are sent base64url-encoded with padding, as the
docs' own example does; the server accepts every variant clients actually send.
"""

from __future__ import annotations

import base64
import os

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PREFIX = "ed25519:"


def _private_key(secret: str) -> Ed25519PrivateKey:
    """The signing key for a secret given with or without the prefix, as 32 or 64 bytes."""
    raw = base58.b58decode(secret.removeprefix(PREFIX))
    if len(raw) not in (32, 64):
        raise ValueError("an Orderly secret is a base58 32-byte seed (or 64-byte keypair)")
    return Ed25519PrivateKey.from_private_bytes(raw[:32])


def key_for_seed(seed: bytes) -> tuple[str, str]:
    """``(orderly_key, orderly_secret)`` for a 32-byte seed (deterministic; for tests/demos)."""
    private = Ed25519PrivateKey.from_private_bytes(seed)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PREFIX + base58.b58encode(public).decode(), PREFIX + base58.b58encode(seed).decode()


def generate_key() -> tuple[str, str]:
    """A fresh random key pair: ``("ed25519:<b58 pub>", "ed25519:<b58 32-byte seed>")``."""
    return key_for_seed(os.urandom(32))


def sign(secret: str, message: str) -> str:
    """Sign ``message`` (e.g. ``timestamp + METHOD + path?query + body``); base64url, padded."""
    signature = _private_key(secret).sign(message.encode())
    return base64.urlsafe_b64encode(signature).decode()


def signed_headers(
    secret: str,
    orderly_key: str,
    account_id: str,
    timestamp_ms: int,
    method: str,
    path_and_query: str,
    body: str = "",
) -> dict[str, str]:
    """The four ``orderly-*`` headers for one REST request (docs/exchange.md §2)."""
    message = f"{timestamp_ms}{method.upper()}{path_and_query}{body}"
    return {
        "orderly-timestamp": str(timestamp_ms),
        "orderly-account-id": account_id,
        "orderly-key": orderly_key,
        "orderly-signature": sign(secret, message),
    }
