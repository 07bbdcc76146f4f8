"""Orderly request signing: ed25519 over ``<ts_ms><METHOD><path?query><body>``
(docs/exchange.md §2).

Keys are Orderly's text format: the public key as ``ed25519:<base58 32 bytes>``, the secret as
the base58 seed with or without the ``ed25519:`` prefix, 32 bytes (seed) or 64 bytes (seed
followed by the public key, libsodium's layout). Signatures are base64url with padding, the
encoding the docs specify; the exchange also accepts standard base64 (§2).

The secret lives only inside the ``Signer``'s private key object: it is not kept as text, and
no repr, error or log line contains it or a signature.
"""

from __future__ import annotations

import base64

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from guardbot.exchange.errors import AuthError

PREFIX = "ed25519:"


def _b58_bytes(text: str) -> bytes | None:
    try:
        return base58.b58decode(text.removeprefix(PREFIX).strip())
    except ValueError:
        return None


def encode_public_key(public_key: bytes) -> str:
    """``ed25519:<base58>``, the form Orderly registers and expects in ``orderly-key``."""
    return PREFIX + base58.b58encode(public_key).decode("ascii")


def rest_message(ts_ms: int, method: str, path_with_query: str, body: str = "") -> str:
    """The exact text Orderly verifies for a REST call: the body only when there is one."""
    return f"{ts_ms}{method.upper()}{path_with_query}{body}"


class Signer:
    """Signs REST requests and the private WebSocket login for one Orderly key.

    Raises ``AuthError`` (stop and tell the operator) when the secret is not an ed25519 seed
    or does not belong to ``orderly_key``; the error text never contains either secret part.
    """

    __slots__ = ("_private", "orderly_key")

    def __init__(self, orderly_key: str, orderly_secret: SecretStr) -> None:
        seed = _b58_bytes(orderly_secret.get_secret_value())
        if seed is None or len(seed) not in (32, 64):
            raise AuthError(
                None, "the orderly secret is not a base58 ed25519 seed of 32 or 64 bytes"
            )
        private = Ed25519PrivateKey.from_private_bytes(seed[:32])
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if len(seed) == 64 and seed[32:] != public:
            raise AuthError(None, "the orderly secret's public half does not match its seed")
        if _b58_bytes(orderly_key) != public:
            raise AuthError(
                None,
                f"the orderly secret does not belong to key {orderly_key}"
                f" (it belongs to {encode_public_key(public)})",
            )
        self._private = private
        self.orderly_key = encode_public_key(public)

    def __repr__(self) -> str:
        return f"Signer(orderly_key={self.orderly_key!r})"

    def sign(self, message: str) -> str:
        """Base64url (padded) ed25519 signature of ``message``."""
        return base64.urlsafe_b64encode(self._private.sign(message.encode("utf-8"))).decode()

    def rest_headers(
        self, account_id: str, ts_ms: int, method: str, path_with_query: str, body: str = ""
    ) -> dict[str, str]:
        """The four ``orderly-*`` headers plus the Content-Type the docs give (§2)."""
        return {
            "orderly-timestamp": str(ts_ms),
            "orderly-account-id": account_id,
            "orderly-key": self.orderly_key,
            "orderly-signature": self.sign(rest_message(ts_ms, method, path_with_query, body)),
            "Content-Type": (
                "application/json" if method.upper() in ("POST", "PUT")
                else "application/x-www-form-urlencoded"
            ),
        }

    def ws_auth(self, ts_ms: int, request_id: str = "auth") -> dict[str, object]:
        """The private WebSocket ``auth`` message: only the timestamp string is signed (§2)."""
        return {
            "id": request_id,
            "event": "auth",
            "params": {
                "orderly_key": self.orderly_key,
                "sign": self.sign(str(ts_ms)),
                "timestamp": ts_ms,
            },
        }

