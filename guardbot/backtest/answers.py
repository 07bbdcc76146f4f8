"""The venue's reads as the bot's domain values, built from the engine's reports without the
JSON in between.

Over HTTP a poll is the simulator's payload (``guardbot.sim.payloads``) encoded as JSON and
read back by the bot's parser (``guardbot.exchange.wire``). These functions return exactly
what that parser returns for the same payload, figure for figure and down to each
``Decimal``'s exponent: the payloads send every figure as a JSON number, that is through a
float, and the parser reads the float's shortest text back as a ``Decimal`` (``3000.50``
comes back as ``3000.5``, ``5`` as ``5.0``). ``wire_decimal`` is that round trip.

The venue answers with these by default (``VenueParams.wire`` False): the JSON and its
parsing cost more than the guard's own decision on a poll. ``tests/backtest/test_answers.py``
proves them equal to the parsed payloads, and ``VenueParams(wire=True)`` still answers
through the JSON, so parsing at the edge stays exercised.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from guardbot.domain import AccountSnapshot, MarginMode, Position, Source
from guardbot.sim.margin import RATE_STEP
from guardbot.sim.reports import AccountFigures, PositionRow

_MODES = {mode.value: mode for mode in MarginMode}
# payloads sends last_sum_unitary_funding as 0.0: the simulator charges no funding.
_NO_FUNDING = Decimal("0.0")


def wire_decimal(value: Decimal) -> Decimal:
    """``value`` as the bot reads it back from the simulator's JSON: ``payloads.num`` makes
    it a float, JSON writes the float's ``repr``, the parser reads that text as a
    ``Decimal``."""
    return Decimal(repr(float(value)))


def wire_rate(value: Decimal) -> Decimal:
    """A margin rate as the bot reads it back (``payloads.rate``: quantized to 8 decimals
    first)."""
    return Decimal(repr(float(value.quantize(RATE_STEP))))


def position(row: PositionRow, *, account_id: str, asked_ms: int) -> Position:
    """``wire.position`` of ``payloads.position(row, asked_ms)``, a REST row read at
    ``asked_ms``."""
    liquidation = None
    if row.est_liq_price is not None:
        read = wire_decimal(row.est_liq_price)
        liquidation = read if read > 0 else None  # wire.optional_price: 0 means none
    return Position(
        account_id=account_id,
        symbol=row.symbol,
        margin_mode=_MODES[row.margin_mode],
        qty=wire_decimal(row.qty),
        average_open_price=wire_decimal(row.average_open_price),
        cost_position=wire_decimal(row.cost_position),
        mark_price=wire_decimal(row.mark_price),
        margin=wire_decimal(row.margin),
        leverage=row.leverage,
        unsettled_pnl=wire_decimal(row.unsettled_pnl),
        est_liq_price=liquidation,
        mmr=wire_rate(row.mmr),
        imr=wire_rate(row.imr),
        last_sum_unitary_funding=_NO_FUNDING,
        seq=row.seq,
        exchange_ms=row.updated_ms,  # payloads sends it as updated_time, which wire prefers
        received_ms=asked_ms,
        source=Source.REST,
    )


def account_snapshot(figures: AccountFigures, rows: Iterable[PositionRow], *, account_id: str,
                     asked_ms: int, answered_ms: int) -> AccountSnapshot:  # fmt: skip
    """``wire.account_snapshot`` of ``GET /v1/positions`` as the simulator answers it at
    ``answered_ms`` (the envelope's timestamp), asked at ``asked_ms``."""
    return AccountSnapshot(
        account_id=account_id,
        free_collateral=wire_decimal(figures.free_collateral),
        total_collateral_value=wire_decimal(figures.total_collateral_value),
        positions=tuple(position(row, account_id=account_id, asked_ms=asked_ms)
                        for row in rows),
        exchange_ms=answered_ms,
        received_ms=asked_ms,
    )
