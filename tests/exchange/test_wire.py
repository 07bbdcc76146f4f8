from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardbot.domain import MarginMode, Source, SymbolRules
from guardbot.exchange import wire
from guardbot.exchange.errors import MalformedResponse
from guardbot.policies.base import PositionView

ACCOUNT = "0x" + "ab" * 32
RULES = SymbolRules("PERP_ETH_USDC", base_imr=Decimal("0.01"), base_mmr=Decimal("0.006"),
                    imr_factor=Decimal("0.0000002"), base_tick=Decimal("0.0001"),
                    quote_tick=Decimal("0.01"))

# docs/exchange.md §4 Position, as the exchange sends it (JSON numbers, seq above 2**53).
REST_ROW = (
    '{"symbol":"PERP_ETH_USDC","margin_mode":"ISOLATED","position_qty":1.5,'
    '"average_open_price":2000.1,"cost_position":3000.15,"mark_price":1950.25,"margin":310.5,'
    '"leverage":10,"unsettled_pnl":-74.775,"est_liq_price":1800.3,"mmr":0.006,"imr":0.1,'
    '"last_sum_unitary_funding":0.804,"seq":1730181536341943601,"timestamp":1685429350571,'
    '"updated_time":1685429350572,"IMR_withdraw_orders":0.1,"pnl_24_h":0}'
)
# docs/exchange.md §6 position push entry (camelCase).
WS_ENTRY = (
    '{"symbol":"PERP_ETH_USDC","positionQty":3.1408,"costPosition":5706.51952,'
    '"lastSumUnitaryFunding":0.804,"averageOpenPrice":1804.51490427,"unsettledPnl":-2.79856,'
    '"markPrice":1816.2,"estLiqPrice":0.0,"mmr":0.05,"imr":0.1,"seq":1730181536341943600,'
    '"timestamp":1685429350571,"updated_time":1685429350571,"leverage":10,'
    '"marginMode":"CROSS","margin":0}'
)


def test_loads_never_makes_a_float() -> None:
    data = wire.loads('{"a":0.1,"b":[1e-8,2],"c":1730181536341943601}')
    assert data == {"a": Decimal("0.1"), "b": [Decimal("1e-8"), 2], "c": 1730181536341943601}
    assert type(data["a"]) is Decimal


def test_loads_reads_what_json_loads_reads() -> None:
    # one decoder shared by every call, the same encodings and refusals as json.loads
    text = '{"a":[1.50,"x"]}'
    for raw in (text, text.encode(), text.encode("utf-16"), text.encode("utf-8-sig")):
        assert wire.loads(raw) == json.loads(raw, parse_float=Decimal)
    with pytest.raises(MalformedResponse, match="BOM"):
        wire.loads("\ufeff" + text)


def test_numbers_already_decimal_or_int_are_checked_as_any_other() -> None:
    assert wire.dec({"a": Decimal("-1e40")}, "a", "w") == Decimal("-1e40")
    assert wire.integer({"a": -(10**41) + 1}, "a", "w") == -(10**41) + 1
    for bad in (Decimal("1e41"), Decimal("NaN"), Decimal("-Infinity"), True, None):
        with pytest.raises(MalformedResponse, match=r"w\.a"):
            wire.dec({"a": bad}, "a", "w")
    for bad_int in (10**41, True, Decimal("1.5")):
        with pytest.raises(MalformedResponse, match=r"w\.a"):
            wire.integer({"a": bad_int}, "a", "w")
    assert wire.dec({"a": None}, "a", "w", default=Decimal(3)) == 3
    assert wire.integer({}, "a", "w", default=4) == 4


@pytest.mark.parametrize("text", ["", "{", '{"a":NaN}', '{"a":Infinity}', b"\xff"])
def test_loads_rejects_bad_json(text: str | bytes) -> None:
    with pytest.raises(MalformedResponse, match="not valid JSON"):
        wire.loads(text)


def test_rest_position_is_exact() -> None:
    pos = wire.position(wire.loads(REST_ROW), account_id=ACCOUNT, received_ms=7,
                        source=Source.REST)
    assert pos.key == (ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED)
    assert pos.qty == Decimal("1.5") and pos.margin == Decimal("310.5")
    assert pos.mark_price == Decimal("1950.25") and pos.est_liq_price == Decimal("1800.3")
    assert pos.unsettled_pnl == Decimal("-74.775") and pos.mmr == Decimal("0.006")
    assert pos.seq == 1730181536341943601  # not rounded through a float
    assert pos.leverage == 10 and pos.exchange_ms == 1685429350572 and pos.received_ms == 7
    assert pos.source is Source.REST


def test_ws_position_push_and_zero_liq_price_is_none() -> None:
    (pos,) = wire.pushed_positions(
        wire.loads('{"positions":[' + WS_ENTRY + "]}"), account_id=ACCOUNT, received_ms=1
    )
    assert pos.margin_mode is MarginMode.CROSS and pos.qty == Decimal("3.1408")
    assert pos.est_liq_price is None and pos.seq == 1730181536341943600
    assert pos.source is Source.WS


def test_push_merges_by_symbol_and_mode_and_skips_transient_entries() -> None:
    first = json.loads(WS_ENTRY)
    second = {**first, "positionQty": 4, "seq": first["seq"] + 1}
    isolated = {**first, "marginMode": "ISOLATED", "margin": 50}
    transient = {**isolated, "symbol": "PERP_BTC_USDC", "averageOpenPrice": 0}
    data = wire.loads(json.dumps({"positions": [first, isolated, second, transient]}))
    pushed = wire.pushed_positions(data, account_id=ACCOUNT, received_ms=1)
    assert [(p.symbol, p.margin_mode, p.qty) for p in pushed] == [
        ("PERP_ETH_USDC", MarginMode.CROSS, Decimal(4)),
        ("PERP_ETH_USDC", MarginMode.ISOLATED, Decimal("3.1408")),
    ]


def test_account_snapshot_holdings_rules_marks() -> None:
    snap = wire.account_snapshot(
        wire.loads('{"free_collateral":"9000.5","total_collateral_value":10000,"rows":['
                   + REST_ROW + "]}"),
        account_id=ACCOUNT, timestamp_ms=99, received_ms=100,
    )
    assert snap.free_collateral == Decimal("9000.5") and len(snap.positions) == 1
    assert snap.exchange_ms == 99
    (usdc,) = wire.holdings(wire.loads(
        '{"holding":[{"token":"USDC","holding":100.25,"frozen":0,"pending_short":0,'
        '"isolated_margin":310.5,"isolated_order_frozen":0,"updated_time":5}]}'
    ))
    assert usdc.holding == Decimal("100.25") and usdc.isolated_margin == Decimal("310.5")
    rules = wire.symbol_rules(wire.loads(
        '{"rows":[{"symbol":"PERP_ETH_USDC","base_imr":0.01,"base_mmr":0.006,'
        '"imr_factor":0.0000002,"base_tick":0.0001,"quote_tick":0.01,"min_notional":10,'
        '"liquidation_tier":"1"}]}'
    ))
    assert rules["PERP_ETH_USDC"].imr_factor == Decimal("2E-7")
    marks = wire.mark_prices(
        wire.loads('{"rows":[{"symbol":"PERP_ETH_USDC","mark_price":1950.5,"index_price":1}]}'),
        timestamp_ms=3,
    )
    assert marks["PERP_ETH_USDC"].price == Decimal("1950.5")
    assert wire.pushed_marks(wire.loads('[{"symbol":"PERP_BTC_USDC","price":"60000.1"}]'), 4)[
        0
    ].price == Decimal("60000.1")
    (balance,) = wire.pushed_balances(
        wire.loads('{"balances":{"USDC":{"holding":5,"frozen":1,"isolatedMargin":2.5,'
                   '"isolatedOrderFrozen":0,"pendingShortQty":0}}}'), 8
    )
    assert (balance.token, balance.isolated_margin, balance.updated_ms) == (
        "USDC", Decimal("2.5"), 8
    )


def test_envelope_success_error_and_string_code() -> None:
    ok = wire.envelope(wire.loads('{"success":true,"timestamp":1702989203989}'))
    assert ok.success and ok.data is None and ok.timestamp_ms == 1702989203989
    err = wire.envelope(wire.loads(
        '{"code":"-1011","message":"The system is under maintenance.","success":false}'
    ))
    assert (err.success, err.code, err.message) == (
        False, -1011, "The system is under maintenance."
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"position_qty": "abc"}, r"position_qty: expected a number"),
        ({"position_qty": True}, r"position_qty: expected a number"),
        ({"position_qty": None}, r"position_qty: expected a number"),
        ({"margin_mode": "HEDGE"}, r"margin_mode: expected CROSS or ISOLATED"),
        ({"leverage": Decimal("2.5")}, r"leverage: expected an integer"),
        ({"margin": 0.5}, r"margin: expected a number"),  # a float never gets in
        ({"margin": -1}, r"impossible values"),
        ({"symbol": ""}, r"symbol: expected a string"),
        ({"seq": Decimal("1.5")}, r"seq: expected an integer"),
        ({"mark_price": Decimal("1e999999")}, r"mark_price: .* is out of range"),
        ({"margin": "1e-99"}, r"margin: .* is out of range"),
        # an open position's mark and leverage are positive (risk arithmetic divides by them)
        ({"mark_price": 0}, r"impossible values"),
        ({"leverage": 0}, r"impossible values"),
    ],
)
def test_bad_fields_are_named(change: dict[str, Any], message: str) -> None:
    row = {**wire.loads(REST_ROW), **change}
    with pytest.raises(MalformedResponse, match=message):
        wire.position(row, account_id=ACCOUNT, received_ms=0, source=Source.REST)


@pytest.mark.parametrize(
    "change",
    [
        {"est_liq_price": 0},  # no liquidation risk
        {"position_qty": 0, "mark_price": 0, "leverage": 0},  # a closed row
        {"margin_mode": "CROSS", "margin": 0},
    ],
)
def test_zeros_with_a_documented_meaning_parse(change: dict[str, Any]) -> None:
    row = {**wire.loads(REST_ROW), **change}
    wire.position(row, account_id=ACCOUNT, received_ms=0, source=Source.REST)


@pytest.mark.parametrize(
    ("parse", "body", "message"),
    [
        (lambda d: wire.pushed_marks(d, 0), '[{"symbol":"PERP_ETH_USDC","price":0}]',
         r"markprices\[0\]\.price: expected a positive number"),
        (lambda d: wire.mark_prices(d, 0), '{"rows":[{"symbol":"PERP_ETH_USDC","mark_price":-1}]}',
         r"mark_price: expected a positive number"),
        (wire.symbol_rules, '{"rows":[{"symbol":"S","base_imr":0,"base_mmr":0.006,'
         '"imr_factor":0,"base_tick":0.1,"quote_tick":0.01}]}', r"base_imr: expected a positive"),
        (wire.symbol_rules, '{"rows":[{"symbol":"S","base_imr":0.1,"base_mmr":1,'
         '"imr_factor":0,"base_tick":0.1,"quote_tick":0.01}]}', r"impossible margin rates"),
        (wire.symbol_rules, '{"rows":[{"symbol":"S","base_imr":0.1,"base_mmr":0.05,'
         '"imr_factor":-1,"base_tick":0.1,"quote_tick":0.01}]}', r"impossible margin rates"),
    ],
)
def test_zero_or_negative_prices_and_rates_are_malformed(
    parse: Any, body: str, message: str
) -> None:
    with pytest.raises(MalformedResponse, match=message):
        parse(wire.loads(body))


def test_missing_field_is_named() -> None:
    row = dict(wire.loads(REST_ROW))
    del row["mark_price"]
    with pytest.raises(MalformedResponse, match=r"position\.mark_price: missing"):
        wire.position(row, account_id=ACCOUNT, received_ms=0, source=Source.REST)


# -- property-based: malformed input raises MalformedResponse, never anything else ----------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
PARSERS = [
    lambda d: wire.account_snapshot(d, account_id=ACCOUNT, timestamp_ms=None, received_ms=0),
    lambda d: wire.position(d, account_id=ACCOUNT, received_ms=0, source=Source.REST),
    lambda d: wire.pushed_positions(d, account_id=ACCOUNT, received_ms=0),
    wire.holdings, wire.symbol_rules, lambda d: wire.mark_prices(d, 0),
    lambda d: wire.pushed_balances(d, 0), lambda d: wire.pushed_marks(d, 0),
    wire.envelope, lambda d: wire.liquidations(d, account_id=ACCOUNT, where="rows"),
]


@given(data=json_values, parser=st.sampled_from(PARSERS))
def test_arbitrary_json_never_crashes_a_parser(data: Any, parser: Any) -> None:
    with contextlib.suppress(MalformedResponse):
        parser(data)


@given(
    mutation=st.dictionaries(
        st.sampled_from(sorted(json.loads(REST_ROW))), json_values, min_size=1, max_size=4
    )
)
def test_mutated_positions_parse_or_raise_malformed(mutation: dict[str, Any]) -> None:
    row = {**wire.loads(REST_ROW), **mutation}
    try:
        pos = wire.position(row, account_id=ACCOUNT, received_ms=0, source=Source.REST)
    except MalformedResponse:
        return
    assert isinstance(pos.qty, Decimal) and isinstance(pos.leverage, int)
    assert pos.margin >= 0 and pos.mark_price.is_finite()
    if pos.is_open and pos.margin_mode is MarginMode.ISOLATED:
        # whatever parses is something the guard can do its arithmetic on
        PositionView.of(pos, replace(RULES, symbol=pos.symbol))


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_never_crash_loads(raw: bytes | str) -> None:
    with contextlib.suppress(MalformedResponse):
        wire.envelope(wire.loads(raw))


# The ``liquidationsaccount`` push as Orderly documents it (camelCase, one total fee), and a
# ``GET /v1/liquidations`` row (snake_case, the two fees apart).
LIQUIDATION_PUSH = [{
    "liquidationId": 101, "timestamp": 1663313562090, "transferAmountToInsuranceFund": 0,
    "positionsByPerp": [{"symbol": "PERP_BTC_USDC", "positionQty": 1.23,
                         "costPositionTransfer": 1350, "transferPrice": 18123.43,
                         "liquidatorFee": 0.015, "insuranceFundFee": 0.015,
                         "absLiquidationFee": 3520}],
}]  # fmt: skip
LIQUIDATION_ROW = {
    "liquidation_id": 7, "timestamp": 1700000000000, "type": "liquidated",
    "transfer_amount_to_insurance_fund": "1.5",
    "positions_by_perp": [{"symbol": "PERP_ETH_USDC", "position_qty": -2,
                           "transfer_price": "2500.5", "abs_liquidator_fee": "3.25",
                           "abs_insurance_fund_fee": "1.75"}],
}  # fmt: skip


def test_liquidations_parse_from_the_push_and_the_rest_row() -> None:
    data = json.loads(json.dumps(LIQUIDATION_PUSH), parse_float=Decimal)
    [pushed] = wire.liquidations(data, account_id="0xa", where="push")
    assert (pushed.liquidation_id, pushed.time_ms, pushed.symbol, pushed.qty) == (
        101, 1663313562090, "PERP_BTC_USDC", Decimal("1.23"))
    assert (pushed.transfer_price, pushed.fee, pushed.to_insurance_fund) == (
        Decimal("18123.43"), Decimal(3520), Decimal(0))
    [row] = wire.liquidations([LIQUIDATION_ROW], account_id="0xa", where="rows")
    assert (row.qty, row.transfer_price, row.fee, row.to_insurance_fund) == (
        Decimal(-2), Decimal("2500.5"), Decimal(5), Decimal("1.5"))


@pytest.mark.parametrize(("item", "message"), [
    ({**LIQUIDATION_ROW, "positions_by_perp": None}, "rows[0].positions_by_perp"),
    ({**LIQUIDATION_ROW, "liquidation_id": "x"}, "liquidation_id"),
    ({**LIQUIDATION_ROW, "positions_by_perp": [{"symbol": "S"}]}, "position_qty"),
])  # fmt: skip
def test_a_malformed_liquidation_is_named(item: dict[str, Any], message: str) -> None:
    with pytest.raises(MalformedResponse, match=re.escape(message)):
        wire.liquidations([item], account_id="0xa", where="rows")


def test_key_scopes_are_those_of_our_own_key() -> None:
    data = {"rows": [
        {"orderly_key": "ed25519:other", "scope": "read", "key_status": "ACTIVE"},
        {"orderly_key": "ed25519:ours", "scope": "read, trading", "key_status": "ACTIVE"},
    ]}  # fmt: skip
    assert wire.key_scopes(data, "ed25519:ours") == {"read", "trading"}
    with pytest.raises(MalformedResponse, match="ed25519:gone is not listed"):
        wire.key_scopes(data, "ed25519:gone")
    with pytest.raises(MalformedResponse):
        wire.key_scopes({"rows": [{"orderly_key": "ed25519:ours"}]}, "ed25519:ours")
