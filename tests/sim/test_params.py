"""Request parameters as the simulator reads them (guardbot/sim/params.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from guardbot.sim.margin import MARKETS
from guardbot.sim.params import (
    EngineError,
    parse_account_id,
    parse_amount,
    parse_decimal,
    parse_leverage,
    parse_order,
    parse_scopes,
    parse_symbol,
)

ETH = MARKETS["PERP_ETH_USDC"]


@pytest.mark.parametrize("value", [True, None, "abc", "NaN", "Infinity", [], {}])
def test_parse_decimal_refuses_what_is_not_a_finite_number(value: object) -> None:
    with pytest.raises(EngineError) as refused:
        parse_decimal(value, "price")
    assert refused.value.code == -1005 and "price" in refused.value.message


def test_parse_decimal_reads_strings_and_numbers_exactly() -> None:
    assert parse_decimal("123.456789", "x") == Decimal("123.456789")
    assert parse_decimal(0.1, "x") == Decimal("0.1")
    assert parse_decimal(7, "x") == 7


@pytest.mark.parametrize(
    ("value", "words"),
    [("0", "positive"), ("-1", "positive"), ("1.0000001", "6 decimals"), (False, "number")],
)
def test_parse_amount_refusals(value: object, words: str) -> None:
    with pytest.raises(EngineError, match=words):
        parse_amount(value)


def test_parse_amount_accepts_six_decimals_and_trailing_zeros() -> None:
    assert parse_amount("0.000001") == Decimal("0.000001")
    assert parse_amount("5.1000000") == Decimal("5.1")


def test_account_ids_scopes_symbols_and_leverage() -> None:
    upper = "0x" + "AB" * 32
    assert parse_account_id(upper) == upper.lower()
    with pytest.raises(EngineError, match="64 hex"):
        parse_account_id("0x" + "g" * 64)
    assert parse_scopes(" read , trading ") == frozenset({"read", "trading"})
    with pytest.raises(EngineError, match="subset"):
        parse_scopes("read,withdraw")
    assert parse_symbol("PERP_ETH_USDC", MARKETS) is ETH
    with pytest.raises(EngineError, match="PERP_NOPE_USDC"):
        parse_symbol("PERP_NOPE_USDC", MARKETS)
    assert parse_leverage(100, ETH) == 100
    for bad in (True, 101, 0, "10"):
        with pytest.raises(EngineError):
            parse_leverage(bad, ETH)


def test_parse_order_checks_in_the_documented_order() -> None:
    request = parse_order(ETH, "ISOLATED", "LIMIT", "BUY", "1.5", "2900", None, False, "c-1")
    assert (request.quantity, request.price, request.margin_mode) == (
        Decimal("1.5"),
        Decimal("2900"),
        "ISOLATED",  # the account's default when none is given
    )
    market = parse_order(ETH, "CROSS", "MARKET", "SELL", 1, "2900", "ISOLATED", True, None)
    assert market.price is None and market.margin_mode == "ISOLATED"
    # A bad margin mode is named before a bad price; a price off the tick is -1103.
    with pytest.raises(EngineError, match="margin_mode"):
        parse_order(ETH, "CROSS", "LIMIT", "BUY", "1", "0.001", "BOTH", False, None)
    with pytest.raises(EngineError) as refused:
        parse_order(ETH, "CROSS", "LIMIT", "BUY", "1", "2900.001", None, False, None)
    assert refused.value.code == -1103
    with pytest.raises(EngineError, match="client_order_id"):
        parse_order(ETH, "CROSS", "MARKET", "BUY", "1", None, None, False, "x" * 37)
