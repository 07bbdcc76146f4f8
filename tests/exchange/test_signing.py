from __future__ import annotations

import base58
import pytest
from pydantic import SecretStr

from guardbot.exchange.errors import AuthError
from guardbot.exchange.signing import Signer, encode_public_key, rest_message

# docs/exchange.md §2 test vector: seed bytes 01..20.
SEED = bytes(range(1, 33))
SECRET = "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"
KEY = "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"
TS = 1700000000000


def test_secret_is_the_base58_seed() -> None:
    assert base58.b58encode(SEED).decode() == SECRET


@pytest.mark.parametrize(
    ("method", "path", "body", "signature"),
    [
        (
            "POST",
            "/v1/position_margin",
            '{"symbol":"PERP_ETH_USDC","amount":"100","type":"ADD"}',
            "i95ACdXar-J8IEMXzwuB2kgsmiToWN6jOC3Qjqcb1IzLAudFd_fUhuQpFANbH1IGCpK-_vejy5Ix8rUR-nTuBQ==",
        ),
        (
            "GET",
            "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED",
            "",
            "eKNlO8IlhVxK_9f4KkoO-21GVE_YiP8aSv0Zj2ad9pu9hsA3m19cRdGrZ-xxIGrJdWyR78xPV2-Bs3b2FrgRBg==",
        ),
    ],
)
def test_rest_vectors(method: str, path: str, body: str, signature: str) -> None:
    signer = Signer(KEY, SecretStr(SECRET))
    assert signer.sign(rest_message(TS, method, path, body)) == signature
    headers = signer.rest_headers("0xabc", TS, method, path, body)
    assert headers["orderly-signature"] == signature
    assert headers["orderly-timestamp"] == "1700000000000"
    assert headers["orderly-key"] == KEY
    assert headers["orderly-account-id"] == "0xabc"
    expected_type = "application/json" if method == "POST" else "application/x-www-form-urlencoded"
    assert headers["Content-Type"] == expected_type


def test_ws_auth_vector() -> None:
    auth = Signer(KEY, SecretStr(SECRET)).ws_auth(TS)
    assert auth == {
        "id": "auth",
        "event": "auth",
        "params": {
            "orderly_key": KEY,
            "sign": (
                "5pxP8dNVhp5_yfq_vsz4azXqQkzI6ULFJcKfEJ53LxGOZ4AJVCb9"
                "-kdxDEZpOR0KsAjEd_TG9Vt9CuZ8CafoCA=="
            ),
            "timestamp": TS,
        },
    }


@pytest.mark.parametrize(
    "secret",
    [
        SECRET,
        "ed25519:" + SECRET,
        base58.b58encode(SEED + base58.b58decode(KEY.removeprefix("ed25519:"))).decode(),
        "ed25519:" + base58.b58encode(SEED + base58.b58decode(KEY[8:])).decode(),
    ],
)
def test_secret_accepted_with_or_without_prefix_32_or_64_bytes(secret: str) -> None:
    signer = Signer(KEY, SecretStr(secret))
    assert signer.orderly_key == KEY
    assert signer.sign("x") == Signer(KEY, SecretStr(SECRET)).sign("x")


def test_key_without_prefix_is_normalised() -> None:
    assert Signer(KEY.removeprefix("ed25519:"), SecretStr(SECRET)).orderly_key == KEY


@pytest.mark.parametrize(
    ("key", "secret", "reason"),
    [
        (KEY, "not-base58-0OIl", "not a base58 ed25519 seed"),
        (KEY, base58.b58encode(SEED[:31]).decode(), "not a base58 ed25519 seed"),
        (KEY, base58.b58encode(SEED + bytes(32)).decode(), "public half does not match"),
        (encode_public_key(bytes(32)), SECRET, "does not belong to key"),
    ],
)
def test_bad_secret_is_an_auth_error_without_the_secret(key: str, secret: str, reason: str) -> None:
    with pytest.raises(AuthError, match=reason) as info:
        Signer(key, SecretStr(secret))
    assert secret not in str(info.value)
    assert SECRET not in str(info.value)


def test_repr_hides_the_secret() -> None:
    signer = Signer(KEY, SecretStr(SECRET))
    assert SECRET not in repr(signer)
    assert KEY in repr(signer)
    with pytest.raises(AttributeError):
        signer.extra = 1  # type: ignore[attr-defined]


def test_an_unusable_secret_says_so_without_a_code() -> None:
    with pytest.raises(AuthError) as bad:
        Signer("ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj", SecretStr("0OIl"))
    assert str(bad.value) == ("authentication failed: the orderly secret is not a base58"
                              " ed25519 seed of 32 or 64 bytes")
