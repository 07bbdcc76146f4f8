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


# What each figure reads back as, remembered: a poll repeats most of them (a position's
# quantity, cost and margin until they change, a symbol's mark for every account, the margin
# rates), and the round trip costs twenty dictionary look-ups. Equal figures read back alike
# (the float depends on the value only), so ``5`` and ``5.0`` may share an entry; zeros are
# not remembered, since ``-0`` equals ``0`` but reads back as ``-0.0``.
_READ: dict[Decimal, Decimal] = {}
_RATES: dict[Decimal, Decimal] = {}
REMEMBERED = 100_000  # figures kept; forgotten all at once beyond it


def _read_back(cache: dict[Decimal, Decimal], value: Decimal,
               quantum: Decimal | None = None) -> Decimal:  # fmt: skip
    """``value`` (quantized to ``quantum`` first, if given) through the float and back,
    remembered."""
    read = cache.get(value)
    if read is None:
        figure = value if quantum is None else value.quantize(quantum)
        read = Decimal(repr(float(figure)))
        if value:  # zeros are not remembered (see above)
            if len(cache) >= REMEMBERED:
                cache.clear()
            cache[value] = read
    return read


def wire_decimal(value: Decimal) -> Decimal:
    """``value`` as the bot reads it back from the simulator's JSON: ``payloads.num`` makes
    it a float, JSON writes the float's ``repr``, the parser reads that text as a
    ``Decimal``."""
    return _read_back(_READ, value)


def wire_rate(value: Decimal) -> Decimal:
    """A margin rate as the bot reads it back (``payloads.rate``: quantized to 8 decimals
    first)."""
    return _read_back(_RATES, value, RATE_STEP)


def position(row: PositionRow, *, account_id: str, asked_ms: int) -> Position:
    """``wire.position`` of ``payloads.position(row, asked_ms)``, a REST row read at
    ``asked_ms``."""
    liquidation = None
    if row.est_liq_price is not None:
        read = wire_decimal(row.est_liq_price)
        liquidation = read if read > 0 else None  # wire.optional_price: 0 means none
    # Positional, in Position's field order (keywords cost twice as much on every poll).
    return Position(
        account_id, row.symbol, _MODES[row.margin_mode], wire_decimal(row.qty),
        wire_decimal(row.average_open_price), wire_decimal(row.cost_position),
        wire_decimal(row.mark_price), wire_decimal(row.margin), row.leverage,
        wire_decimal(row.unsettled_pnl), liquidation, wire_rate(row.mmr), wire_rate(row.imr),
        _NO_FUNDING, row.seq,
        row.updated_ms,  # exchange_ms: payloads sends updated_time, which wire prefers
        asked_ms, Source.REST)  # fmt: skip


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
