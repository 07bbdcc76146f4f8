"""Orderly wire JSON -> frozen domain values, at the edge (docs/architecture.md, "Conventions").

JSON is decoded with ``parse_float=Decimal``, so no float ever exists: money, prices and
quantities become ``Decimal`` (a JSON number, or a numeric string, is accepted), ``seq`` an
``int`` (it exceeds 2**53, docs/exchange.md §4), times integer milliseconds. Anything that does
not match the documented shape raises ``MalformedResponse`` naming the field; nothing past
this module sees a raw dict.

REST positions are snake_case (``/v1/positions``, ``/v1/position/{symbol}``); WebSocket
``position`` pushes are camelCase (§6): one ``_POSITION_FIELDS`` table maps both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from guardbot.domain import (
    ZERO,
    AccountSnapshot,
    Holding,
    Liquidation,
    MarginMode,
    MarkPrice,
    Position,
    Source,
    SymbolRules,
)
from guardbot.exchange.errors import MalformedResponse

JsonObject = Mapping[str, Any]
MAX_MAGNITUDE = 40  # decimal exponent bound for any number on the wire


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


# One decoder for every call: ``json.loads`` with options builds a new one each time.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def loads(text: str | bytes) -> Any:
    """Decode JSON without ever creating a float. Raises ``MalformedResponse``.

    Reads exactly what ``json.loads`` reads (bytes in UTF-8, -16 or -32; a str starting
    with a byte order mark is refused)."""
    try:
        if isinstance(text, bytes | bytearray):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        elif text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise MalformedResponse(f"not valid JSON: {exc}") from None


# -- field readers -------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def obj(value: Any, where: str) -> JsonObject:
    """``value`` as a JSON object, or ``MalformedResponse``."""
    if not isinstance(value, Mapping):
        raise MalformedResponse(f"{where}: expected an object, got {_describe(value)}")
    return value


def rows(data: Any, where: str, key: str = "rows") -> list[JsonObject]:
    """``data[key]`` as a list of objects."""
    items = obj(data, where).get(key)
    if not isinstance(items, list):
        raise MalformedResponse(f"{where}.{key}: expected a list, got {_describe(items)}")
    return [obj(item, f"{where}.{key}[{i}]") for i, item in enumerate(items)]


def _field(data: JsonObject, name: str, where: str) -> Any:
    if name not in data:
        raise MalformedResponse(f"{where}.{name}: missing")
    return data[name]


_MISSING = object()
_INT_BOUND = 10 ** (MAX_MAGNITUDE + 1)  # the integers ``dec`` accepts are below this


def dec(data: JsonObject, name: str, where: str, default: Decimal | None = None) -> Decimal:
    """A finite Decimal from a JSON number or numeric string."""
    value = data.get(name, _MISSING)
    if type(value) is Decimal and value.is_finite() and (
        not value or -MAX_MAGNITUDE <= value.adjusted() <= MAX_MAGNITUDE
    ):
        return value  # what ``loads`` makes of a JSON number, already checked
    return _dec(data, name, where, default)


def _dec(data: JsonObject, name: str, where: str, default: Decimal | None) -> Decimal:
    if default is not None and data.get(name) is None:
        return default
    value = _field(data, name, where)
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        raise MalformedResponse(f"{where}.{name}: expected a number, got {_describe(value)}")
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise MalformedResponse(
            f"{where}.{name}: expected a number, got {_describe(value)}"
        ) from None
    if not result.is_finite():
        raise MalformedResponse(f"{where}.{name}: expected a finite number, got {result}")
    if result and not -MAX_MAGNITUDE <= result.adjusted() <= MAX_MAGNITUDE:
        # No price, amount or seq is anywhere near this; such a value would only overflow
        # the risk arithmetic further on.
        raise MalformedResponse(f"{where}.{name}: {_describe(result)} is out of range")
    return result


def integer(data: JsonObject, name: str, where: str, default: int | None = None) -> int:
    """An int from a JSON integer, an integral number or a digit string (``seq``, times)."""
    value = data.get(name, _MISSING)
    if type(value) is int and -_INT_BOUND < value < _INT_BOUND:
        return value  # a JSON integer: what ``dec`` and the checks below would make of it
    if default is not None and data.get(name) is None:
        return default
    value = dec(data, name, where)
    if value != value.to_integral_value():
        raise MalformedResponse(f"{where}.{name}: expected an integer, got {value}")
    return int(value)


def positive(data: JsonObject, name: str, where: str) -> Decimal:
    """A Decimal that must be above 0 (a price, a tick, a margin rate)."""
    value = dec(data, name, where)
    if value <= 0:
        raise MalformedResponse(f"{where}.{name}: expected a positive number, got {value}")
    return value


def text(data: JsonObject, name: str, where: str) -> str:
    value = _field(data, name, where)
    if not isinstance(value, str) or not value:
        raise MalformedResponse(f"{where}.{name}: expected a string, got {_describe(value)}")
    return value


def margin_mode(data: JsonObject, name: str, where: str) -> MarginMode:
    value = text(data, name, where)
    try:
        return MarginMode(value.upper())
    except ValueError:
        raise MalformedResponse(
            f"{where}.{name}: expected CROSS or ISOLATED, got {_describe(value)}"
        ) from None


def optional_price(data: JsonObject, name: str, where: str) -> Decimal | None:
    """``est_liq_price``: 0 or null when there is no liquidation risk (docs/exchange.md §4)."""
    if data.get(name) is None:
        return None
    value = dec(data, name, where)
    return value if value > 0 else None


# -- envelope ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded Orderly response: ``{"success", "data"?, "timestamp"?}`` or an error."""

    success: bool
    data: Any
    timestamp_ms: int | None
    code: int | None
    message: str


def envelope(body: Any) -> Envelope:
    """Read the envelope of docs/exchange.md §3; ``code`` may arrive as a string."""
    top = obj(body, "response")
    success = top.get("success")
    if not isinstance(success, bool):
        raise MalformedResponse(f"response.success: expected a boolean, got {_describe(success)}")
    ts = integer(top, "timestamp", "response") if top.get("timestamp") is not None else None
    if success:
        return Envelope(True, top.get("data"), ts, None, "")
    code = integer(top, "code", "response") if top.get("code") is not None else None
    message = top.get("message")
    return Envelope(False, None, ts, code, message if isinstance(message, str) else "")


# -- domain values -------------------------------------------------------------------------

# domain field -> (REST name, WS name). Reader per domain field below.
_POSITION_FIELDS: dict[str, tuple[str, str]] = {
    "symbol": ("symbol", "symbol"),
    "margin_mode": ("margin_mode", "marginMode"),
    "qty": ("position_qty", "positionQty"),
    "average_open_price": ("average_open_price", "averageOpenPrice"),
    "cost_position": ("cost_position", "costPosition"),
    "mark_price": ("mark_price", "markPrice"),
    "margin": ("margin", "margin"),
    "leverage": ("leverage", "leverage"),
    "unsettled_pnl": ("unsettled_pnl", "unsettledPnl"),
    "est_liq_price": ("est_liq_price", "estLiqPrice"),
    "mmr": ("mmr", "mmr"),
    "imr": ("imr", "imr"),
    "last_sum_unitary_funding": ("last_sum_unitary_funding", "lastSumUnitaryFunding"),
}
_READERS: dict[str, Callable[[JsonObject, str, str], Any]] = {
    "symbol": text,
    "margin_mode": margin_mode,
    "leverage": integer,
    "est_liq_price": optional_price,
}
# (domain field, wire name, reader) for REST (False) and WS (True) spellings.
_POSITION_READS = {
    ws: tuple((name, names[ws], _READERS.get(name, dec))
              for name, names in _POSITION_FIELDS.items())
    for ws in (False, True)
}  # fmt: skip


def position(
    data: Any, *, account_id: str, received_ms: int, source: Source, where: str = "position"
) -> Position:
    """One position from a REST row (``Source.REST``) or a WS ``position`` entry (``WS``)."""
    item = obj(data, where)
    reads = _POSITION_READS[source is Source.WS]
    values = {name: read(item, key, where) for name, key, read in reads}
    # margin is 0 for CROSS and est_liq_price 0 means no risk (optional_price), but an open
    # position always has a positive mark and a leverage of at least 1: anything else would
    # only fail later, in the risk arithmetic, for the whole account.
    if values["margin"] < 0 or (
        values["qty"] != 0 and (values["leverage"] < 1 or values["mark_price"] <= 0)
    ):
        raise MalformedResponse(
            f"{where}: impossible values (margin {values['margin']}, leverage"
            f" {values['leverage']}, mark {values['mark_price']})"
        )
    time_field = "updated_time" if item.get("updated_time") is not None else "timestamp"
    return Position(
        account_id=account_id,
        seq=integer(item, "seq", where) if item.get("seq") is not None else None,
        exchange_ms=integer(item, time_field, where),
        received_ms=received_ms,
        source=source,
        **values,
    )


def account_snapshot(
    data: Any, *, account_id: str, timestamp_ms: int | None, received_ms: int
) -> AccountSnapshot:
    """``GET /v1/positions`` ``data``: account figures plus every row."""
    top = obj(data, "positions")
    positions = tuple(
        position(row, account_id=account_id, received_ms=received_ms, source=Source.REST,
                 where=f"positions.rows[{i}]")
        for i, row in enumerate(rows(top, "positions"))
    )
    return AccountSnapshot(
        account_id=account_id,
        free_collateral=dec(top, "free_collateral", "positions"),
        total_collateral_value=dec(top, "total_collateral_value", "positions"),
        positions=positions,
        exchange_ms=timestamp_ms if timestamp_ms is not None else received_ms,
        received_ms=received_ms,
    )


def holdings(data: Any) -> tuple[Holding, ...]:
    """``GET /v1/client/holding`` ``data.holding[]``."""
    result = []
    for i, item in enumerate(rows(data, "holding", key="holding")):
        where = f"holding[{i}]"
        result.append(
            Holding(
                token=text(item, "token", where),
                holding=dec(item, "holding", where),
                frozen=dec(item, "frozen", where, ZERO),
                pending_short=dec(item, "pending_short", where, ZERO),
                isolated_margin=dec(item, "isolated_margin", where, ZERO),
                isolated_order_frozen=dec(item, "isolated_order_frozen", where, ZERO),
                updated_ms=integer(item, "updated_time", where, 0),
            )
        )
    return tuple(result)


def key_scopes(data: Any, orderly_key: str) -> frozenset[str]:
    """``GET /v1/client/key_info`` ``data.rows[]``: the scopes of ``orderly_key`` (its
    ``scope``, comma-separated, e.g. ``read,trading``)."""
    for i, item in enumerate(rows(data, "key_info")):
        if item.get("orderly_key") == orderly_key:
            scope = text(item, "scope", f"key_info[{i}]")
            return frozenset(s.strip() for s in scope.split(",") if s.strip())
    raise MalformedResponse(f"key_info: the key {orderly_key} is not listed")


def symbol_rules(data: Any) -> dict[str, SymbolRules]:
    """``GET /v1/public/info`` ``data.rows[]``, by symbol."""
    result: dict[str, SymbolRules] = {}
    for i, item in enumerate(rows(data, "info")):
        where = f"info.rows[{i}]"
        rule = SymbolRules(
            symbol=text(item, "symbol", where),
            base_imr=positive(item, "base_imr", where),
            base_mmr=positive(item, "base_mmr", where),
            imr_factor=dec(item, "imr_factor", where),
            base_tick=positive(item, "base_tick", where),
            quote_tick=positive(item, "quote_tick", where),
            min_notional=dec(item, "min_notional", where, ZERO),
        )
        if rule.base_mmr >= 1 or rule.base_imr > 1 or rule.imr_factor < 0:
            raise MalformedResponse(
                f"{where}: impossible margin rates (base_imr {rule.base_imr}, base_mmr"
                f" {rule.base_mmr}, imr_factor {rule.imr_factor})"
            )
        result[rule.symbol] = rule
    return result


def mark_prices(data: Any, timestamp_ms: int) -> dict[str, MarkPrice]:
    """``GET /v1/public/futures`` ``data.rows[]``, by symbol."""
    result: dict[str, MarkPrice] = {}
    for i, item in enumerate(rows(data, "futures")):
        where = f"futures.rows[{i}]"
        mark = MarkPrice(text(item, "symbol", where), positive(item, "mark_price", where),
                         timestamp_ms)
        result[mark.symbol] = mark
    return result


# -- WebSocket pushes (docs/exchange.md §6) ---------------------------------------------------


def pushed_positions(data: Any, *, account_id: str, received_ms: int) -> tuple[Position, ...]:
    """A ``position`` push's ``data.positions[]``. Entries with ``averageOpenPrice == 0`` while
    ``positionQty != 0`` are transient and skipped, as the official frontend does (§6).
    Within one push the last entry per (symbol, margin mode) wins."""
    merged: dict[tuple[str, MarginMode], Position] = {}
    for i, item in enumerate(rows(data, "position", key="positions")):
        pos = position(item, account_id=account_id, received_ms=received_ms,
                       source=Source.WS, where=f"position.positions[{i}]")
        if pos.qty != 0 and pos.average_open_price == 0:
            continue
        merged[(pos.symbol, pos.margin_mode)] = pos
    return tuple(merged.values())


def pushed_balances(data: Any, ts_ms: int) -> tuple[Holding, ...]:
    """A ``balance`` push's ``data.balances`` (token -> camelCase fields)."""
    balances = obj(obj(data, "balance").get("balances"), "balance.balances")
    result = []
    for token, raw in balances.items():
        where = f"balance.balances.{token}"
        item = obj(raw, where)
        result.append(
            Holding(
                token=str(token),
                holding=dec(item, "holding", where),
                frozen=dec(item, "frozen", where, ZERO),
                pending_short=dec(item, "pendingShortQty", where, ZERO),
                isolated_margin=dec(item, "isolatedMargin", where, ZERO),
                isolated_order_frozen=dec(item, "isolatedOrderFrozen", where, ZERO),
                updated_ms=ts_ms,
            )
        )
    return tuple(result)


def pushed_marks(data: Any, ts_ms: int) -> tuple[MarkPrice, ...]:
    """A ``markprices`` push's ``data[{symbol, price}]``."""
    if not isinstance(data, list):
        raise MalformedResponse(f"markprices.data: expected a list, got {_describe(data)}")
    marks = []
    for i, raw in enumerate(data):
        where = f"markprices[{i}]"
        item = obj(raw, where)
        marks.append(
            MarkPrice(text(item, "symbol", where), positive(item, "price", where), ts_ms)
        )
    return tuple(marks)


# -- liquidations (docs/exchange.md "Liquidation data") --------------------------------------
# The REST rows are snake_case, the ``liquidationsaccount`` push camelCase; one reader takes
# either spelling of each field.
_LIQUIDATION_FIELDS = {
    "liquidation_id": "liquidationId",
    "timestamp": "timestamp",
    "transfer_amount_to_insurance_fund": "transferAmountToInsuranceFund",
    "positions_by_perp": "positionsByPerp",
    "position_qty": "positionQty",
    "transfer_price": "transferPrice",
    "abs_liquidator_fee": "absLiquidatorFee",
    "abs_insurance_fund_fee": "absInsuranceFundFee",
    "abs_liquidation_fee": "absLiquidationFee",
}


_FEES = ("abs_liquidator_fee", "abs_insurance_fund_fee")


def _spelled(item: JsonObject) -> JsonObject:
    """``item`` with its camelCase keys under their snake_case names."""
    spelled = dict(item)
    for snake, camel in _LIQUIDATION_FIELDS.items():
        if snake not in spelled and camel in spelled:
            spelled[snake] = spelled[camel]
    return spelled


def liquidations(items: Any, *, account_id: str, where: str) -> tuple[Liquidation, ...]:
    """Liquidations of ``account_id``: a list of liquidation objects, each with its
    ``positions_by_perp`` (one ``Liquidation`` per position taken over)."""
    if not isinstance(items, list):
        raise MalformedResponse(f"{where}: expected a list, got {_describe(items)}")
    result = []
    for i, raw in enumerate(items):
        at = f"{where}[{i}]"
        item = _spelled(obj(raw, at))
        liquidation_id = integer(item, "liquidation_id", at)
        time_ms = integer(item, "timestamp", at)
        to_fund = (dec(item, "transfer_amount_to_insurance_fund", at)
                   if item.get("transfer_amount_to_insurance_fund") is not None else None)
        perps = item.get("positions_by_perp")
        if not isinstance(perps, list):
            raise MalformedResponse(f"{at}.positions_by_perp: expected a list, got "
                                    f"{_describe(perps)}")
        for j, raw_perp in enumerate(perps):
            pat = f"{at}.positions_by_perp[{j}]"
            perp = _spelled(obj(raw_perp, pat))
            # The two fees, or (as the push's documented example shows) their total.
            names = [n for n in _FEES if perp.get(n) is not None]
            if not names and perp.get("abs_liquidation_fee") is not None:
                names = ["abs_liquidation_fee"]
            fees = [dec(perp, name, pat) for name in names]
            result.append(Liquidation(
                account_id=account_id, liquidation_id=liquidation_id, time_ms=time_ms,
                symbol=text(perp, "symbol", pat), qty=dec(perp, "position_qty", pat),
                transfer_price=dec(perp, "transfer_price", pat),
                fee=sum(fees, ZERO) if fees else None, to_insurance_fund=to_fund))
    return tuple(result)
