"""Liquidation at the current marks: which positions go, what the account loses and what the
insurance fund gets.

Choices where docs/exchange.md marks the real behaviour unconfirmed (documented best guesses):

- Isolated liquidation closes the position at mark; its whole margin is lost to the account
  and the remaining equity (negative after a gap: a payout) goes to the insurance fund. The
  holding, cross positions and other isolated positions are untouched.
- Cross liquidation (``TCV <= Σ cross notional*MMR``) closes every cross position at mark,
  realizes the PnL into ``holding``, and charges ``std_liquidation_fee * notional`` (capped by
  what is left) to the insurance fund, which also absorbs any negative balance.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from guardbot.sim import margin as m
from guardbot.sim.journal import Journal
from guardbot.sim.margin import ZERO, Market, usdc
from guardbot.sim.params import CROSS, ISOLATED
from guardbot.sim.records import Account, Liquidation, PositionState
from guardbot.sim.reports import Markets, Marks, account_figures, cross_maintenance, upnl

log = logging.getLogger(__name__)


class SafeMarks:
    """Per isolated position, the marks at which it cannot be liquidated
    (``margin.isolated_safe_marks``), kept with the figures they were computed from: a mark
    inside them needs no liquidation test, and any change of the margin, quantity or cost
    computes them again."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str], tuple[Market, Decimal, Decimal, Decimal,
                                                 Decimal, Decimal]] = {}  # fmt: skip

    def holds(self, account_id: str, position: PositionState, market: Market,
              mark: Decimal) -> bool:  # fmt: skip
        """Whether ``mark`` is certainly no liquidation of ``position``."""
        key = (account_id, position.symbol)
        found = self._found.get(key)
        if (found is None or found[0] is not market or found[1] != position.margin
                or found[2] != position.qty or found[3] != position.cost_position):
            low, high = m.isolated_safe_marks(market, position.margin, position.qty,
                                              position.cost_position)
            found = self._found[key] = (market, position.margin, position.qty,
                                        position.cost_position, low, high)
        return found[4] < mark < found[5]


def liquidate(
    journal: Journal, account: Account, symbols: set[str], markets: Markets, marks: Marks,
    safe: SafeMarks | None = None,
) -> tuple[list[Liquidation], Decimal]:
    """Liquidate what the marks of ``symbols`` put under water: isolated positions on those
    symbols first, then the account's cross positions if its collateral no longer covers
    their maintenance margin. Returns the events and what the insurance fund receives.
    ``safe`` spares the test of isolated positions far from liquidation (the outcome is the
    same)."""
    events: list[Liquidation] = []
    to_fund = _isolated(journal, account, symbols, markets, marks, events, safe)
    to_fund += _cross(journal, account, markets, marks, events)
    return events, to_fund


def _isolated(
    journal: Journal,
    account: Account,
    symbols: set[str],
    markets: Markets,
    marks: Marks,
    events: list[Liquidation],
    safe: SafeMarks | None = None,
) -> Decimal:
    to_fund = ZERO
    for position in list(account.open_positions()):
        if position.margin_mode != ISOLATED or position.symbol not in symbols:
            continue
        market = markets[position.symbol]
        mark = marks[position.symbol]
        if safe is not None and safe.holds(account.account_id, position, market, mark):
            continue
        if not m.isolated_is_liquidatable(
            market, position.margin, position.qty, position.cost_position, mark
        ):
            continue
        remainder = m.isolated_equity(position.margin, position.qty, position.cost_position, mark)
        to_fund += remainder
        _record(
            journal,
            events,
            journal.next_liquidation_id(),
            account,
            position.symbol,
            ISOLATED,
            position.qty,
            mark,
            position.margin,
            remainder,
        )
        for order in account.resting_orders():
            if order.symbol == position.symbol and order.margin_mode == ISOLATED:
                order.status, order.frozen = "CANCELLED", ZERO
        _close(journal, account, position)
    return to_fund


def _cross(
    journal: Journal,
    account: Account,
    markets: Markets,
    marks: Marks,
    events: list[Liquidation],
) -> Decimal:
    cross = [p for p in account.open_positions() if p.margin_mode == CROSS]
    if not cross:
        return ZERO
    collateral = account_figures(account, markets, marks).total_collateral_value
    if collateral > cross_maintenance(account, markets, marks):
        return ZERO
    holding_before = account.holding
    closed: list[tuple[PositionState, Decimal, Decimal]] = []  # (position, qty, mark)
    fee_due = ZERO
    for position in cross:
        market = markets[position.symbol]
        mark = marks[position.symbol]
        account.holding += usdc(upnl(position, marks))
        fee_due += abs(position.qty) * mark * market.std_liquidation_fee
        closed.append((position, position.qty, mark))
        _close(journal, account, position)
    fee = usdc(min(fee_due, max(account.holding, ZERO)))
    account.holding -= fee
    to_fund = fee
    if account.holding < 0:  # the fund absorbs the deficit
        to_fund += account.holding
        account.holding = ZERO
    # The event's figures, split over its positions by notional.
    lost = holding_before - account.holding
    total_notional = sum((abs(q) * p for _, q, p in closed), ZERO)
    for position, qty, mark in closed:
        share = abs(qty) * mark / total_notional
        _record(
            journal,
            events,
            journal.next_liquidation_id(),
            account,
            position.symbol,
            CROSS,
            qty,
            mark,
            lost * share,
            to_fund * share,
        )
    for order in account.resting_orders():
        if order.margin_mode == CROSS:
            order.status = "CANCELLED"
    journal.balance_changed(account)
    return to_fund


def _record(
    journal: Journal,
    events: list[Liquidation],
    liquidation_id: int,
    account: Account,
    symbol: str,
    mode: str,
    qty: Decimal,
    price: Decimal,
    lost: Decimal,
    to_fund: Decimal,
) -> None:
    event = Liquidation(
        liquidation_id, account.account_id, symbol, mode, qty, price, usdc(lost), usdc(to_fund),
        journal.clock(),
    )
    events.append(event)
    journal.liquidated(event)
    log.warning(
        "liquidated %s %s %s qty %s at %s: account lost %s, insurance fund got %s",
        account.account_id,
        symbol,
        mode,
        qty,
        price,
        event.margin_lost,
        event.to_insurance_fund,
    )


def _close(journal: Journal, account: Account, position: PositionState) -> None:
    position.qty = position.cost_position = position.average_open_price = ZERO
    position.margin = ZERO
    journal.position_changed(account.account_id, position)
    journal.balance_changed(account)
