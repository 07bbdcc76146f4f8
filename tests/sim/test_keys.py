"""Orderly key pairs and signatures, pinned to the test vectors in docs/exchange.md §2."""

from __future__ import annotations

import base64
import re

import base58
import pytest

from guardbot.sim.keys import generate_key, key_for_seed, sign, signed_headers

SEED = bytes(range(1, 33))
BODY = '{"symbol":"PERP_ETH_USDC","amount":"100","type":"ADD"}'


def test_key_and_secret_spelling() -> None:
    key, secret = key_for_seed(SEED)
    assert key == "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"
    assert secret == "ed25519:4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"
    fresh_key, fresh_secret = generate_key()
    assert re.fullmatch(r"ed25519:[1-9A-HJ-NP-Za-km-z]{32,44}", fresh_key)
    assert len(base58.b58decode(fresh_secret.removeprefix("ed25519:"))) == 32
    assert generate_key() != (fresh_key, fresh_secret)


@pytest.mark.parametrize(
    ("message", "signature"),
    [
        (
            f"1700000000000POST/v1/position_margin{BODY}",
            "i95ACdXar-J8IEMXzwuB2kgsmiToWN6jOC3Qjqcb1IzLAudFd_fUhuQpFANbH1IGCpK-_vejy5Ix8rUR-nTuBQ==",
        ),
        (
            "1700000000000GET/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED",
            "eKNlO8IlhVxK_9f4KkoO-21GVE_YiP8aSv0Zj2ad9pu9hsA3m19cRdGrZ-xxIGrJdWyR78xPV2-Bs3b2FrgRBg==",
        ),
        (
            "1700000000000",
            "5pxP8dNVhp5_yfq_vsz4azXqQkzI6ULFJcKfEJ53LxGOZ4AJVCb9-kdxDEZpOR0KsAjEd_TG9Vt9CuZ8CafoCA==",
        ),
    ],
)
def test_documented_signatures(message: str, signature: str) -> None:
    _, secret = key_for_seed(SEED)
    assert sign(secret, message) == signature


def test_secret_without_prefix_or_as_a_64_byte_keypair() -> None:
    key, secret = key_for_seed(SEED)
    public = base58.b58decode(key.removeprefix("ed25519:"))
    keypair = base58.b58encode(SEED + public).decode()
    expected = sign(secret, "1700000000000")
    assert sign(secret.removeprefix("ed25519:"), "1700000000000") == expected
    assert sign(keypair, "1700000000000") == expected
    with pytest.raises(ValueError, match="32-byte"):
        sign(base58.b58encode(b"short").decode(), "x")


def test_signed_headers() -> None:
    key, secret = key_for_seed(SEED)
    headers = signed_headers(
        secret, key, "0x" + "ab" * 32, 1700000000000, "post", "/v1/position_margin", BODY
    )
    assert headers["orderly-timestamp"] == "1700000000000"
    assert headers["orderly-key"] == key and headers["orderly-account-id"] == "0x" + "ab" * 32
    assert base64.urlsafe_b64decode(headers["orderly-signature"]) == base64.urlsafe_b64decode(
        sign(secret, f"1700000000000POST/v1/position_margin{BODY}")
    )
    assert secret.removeprefix("ed25519:") not in str(headers)
