"""The pure response classifier; the client over real sockets is in test_client.py."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardbot.domain import Source
from guardbot.exchange import wire
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    MalformedResponse,
    RateLimited,
    Rejected,
    RetryLater,
    Uncertain,
)
from guardbot.exchange.rest import Failure, clock_skew_s, interpret, path_with_query
from guardbot.exchange.wire import Envelope

OK = b'{"success":true,"timestamp":1702989203989}'


def err(code: int | str, message: str = "m") -> bytes:
    return b'{"success":false,"code":%s,"message":"%s"}' % (
        str(code).encode() if isinstance(code, int) else f'"{code}"'.encode(),
        message.encode(),
    )


@pytest.mark.parametrize(
    ("method", "status", "body", "error", "label"),
    [
        ("GET", 429, b"", RateLimited, "-1003"),
        ("POST", 429, err(-1003), RateLimited, "-1003"),
        ("GET", 400, err(-1003), RateLimited, "-1003"),
        ("GET", 401, err(-1001), AuthError, "-1001"),
        ("POST", 401, err(-1002), AuthError, "-1002"),
        ("GET", 403, b"<html>", AuthError, "http_403"),
        ("POST", 400, err("-1011"), RetryLater, "-1011"),
        ("GET", 500, err(-1000), RetryLater, "-1000"),
        ("GET", 503, b"<html>", RetryLater, "http_503"),
        ("POST", 500, err(-1000), Uncertain, "-1000"),
        ("POST", 502, b"Bad Gateway", Uncertain, "uncertain"),
        ("POST", 200, b"{truncated", Uncertain, "uncertain"),
        ("POST", 400, err(-1101, "Insufficient margin after the operation."), Rejected, "-1101"),
        ("GET", 400, err(-1006), Rejected, "-1006"),
        ("GET", 200, b"{truncated", MalformedResponse, "malformed"),
        ("GET", 404, b"not found", MalformedResponse, "malformed"),
        ("POST", 200, b'{"success":false,"code":-1005,"message":"bad"}', Rejected, "-1005"),
    ],
)
def test_classification(
    method: str, status: int, body: bytes, error: type[ExchangeError], label: str
) -> None:
    outcome = interpret(method, f"{method} /x", status, body, None)
    assert isinstance(outcome, Failure)
    assert type(outcome.error) is error
    assert outcome.label == label


def test_rejected_keeps_code_message_and_status() -> None:
    outcome = interpret("POST", "POST /x", 400, err(-1101, "Insufficient margin"), None)
    assert isinstance(outcome, Failure) and isinstance(outcome.error, Rejected)
    assert (outcome.error.code, outcome.error.message, outcome.error.http_status) == (
        -1101, "Insufficient margin", 400
    )


def test_retry_after_is_honoured() -> None:
    outcome = interpret("GET", "GET /x", 429, b"", 2.5)
    assert isinstance(outcome, Failure) and isinstance(outcome.error, RateLimited)
    assert outcome.error.retry_after_s == 2.5


def test_uncertain_says_what_to_do() -> None:
    outcome = interpret("POST", "POST /v1/position_margin {}", 504, b"", None)
    assert isinstance(outcome, Failure)
    assert "re-read the position" in str(outcome.error)
    assert "POST /v1/position_margin" in str(outcome.error)


def test_success() -> None:
    assert interpret("POST", "POST /x", 200, OK, None) == Envelope(
        True, None, 1702989203989, None, ""
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, "/v1/positions"),
        ({"margin_mode": "ISOLATED"}, "/v1/positions?margin_mode=ISOLATED"),
        ({"symbol": "PERP_ETH_USDC", "margin_mode": "CROSS"},
         "/v1/positions?symbol=PERP_ETH_USDC&margin_mode=CROSS"),
        ({"q": "a b/c"}, "/v1/positions?q=a%20b%2Fc"),
    ],
)
def test_path_with_query(params: dict[str, str] | None, expected: str) -> None:
    assert path_with_query("/v1/positions", params) == expected


# -- property: no answer, however broken, escapes as anything but an ExchangeError ---------

json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6)
    | st.decimals(allow_nan=False, allow_infinity=False, places=3).map(float),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["success", "data", "code", "message", "timestamp", "rows", "holding",
                         "free_collateral", "total_collateral_value", "symbol", "mark_price"])
        | st.text(max_size=4),
        children, max_size=6,
    ),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode())
PARSERS = [
    lambda d: wire.account_snapshot(d, account_id="0x1", timestamp_ms=None, received_ms=0),
    lambda d: wire.position(d, account_id="0x1", received_ms=0, source=Source.REST),
    wire.holdings, wire.symbol_rules, lambda d: wire.mark_prices(d, 0),
]


@given(
    method=st.sampled_from(["GET", "POST"]),
    status=st.sampled_from([200, 400, 401, 403, 404, 429, 500, 502, 503]) | st.integers(100, 599),
    body=json_bodies | st.binary(max_size=60),
    parse=st.sampled_from(PARSERS),
)
def test_any_answer_becomes_a_value_or_an_exchange_error(
    method: str, status: int, body: bytes, parse: Any
) -> None:
    outcome = interpret(method, f"{method} /x", status, body, None)
    if isinstance(outcome, Failure):
        assert isinstance(outcome.error, ExchangeError)
        if method == "POST" and status >= 500:
            # It may have been applied: never reported as a plain refusal.
            assert not isinstance(outcome.error, Rejected | MalformedResponse)
        return
    assert outcome.success and status < 300
    with contextlib.suppress(MalformedResponse):
        parse(outcome.data)


@pytest.mark.parametrize(
    ("header", "now_ms", "expected"),
    [
        ("Sun, 22 Nov 2026 03:00:00 GMT", 1_795_316_400_000 + 400_000, 400.0),
        ("Sun, 22 Nov 2026 03:00:00 GMT", 1_795_316_400_000 - 5_000, -5.0),
        (None, 0, None),
        ("not a date", 0, None),
    ],
)
def test_clock_skew_from_the_date_header(
    header: str | None, now_ms: int, expected: float | None
) -> None:
    assert clock_skew_s(header, now_ms) == expected
