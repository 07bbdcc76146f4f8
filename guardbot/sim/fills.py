"""How a trade changes a position and the account's USDC, and when a resting order fills.

Choices where docs/exchange.md marks the real behaviour unconfirmed (documented best guesses):

- Isolated fills allocate ``|qty|*price*(1/leverage + 0.0006)``; a partial close releases
  margin pro rata, a full close releases all of it, a flip re-allocates for the new side (§7).
- Fees (taker 0.06 %, maker 0.03 %) and realized PnL always settle to ``holding`` at once; no
  funding is charged, so ``last_sum_unitary_funding`` stays 0 and ``cost_position`` is
  ``qty * average_open_price``.
"""

from __future__ import annotations

from decimal import Decimal

from guardbot.sim import margin as m
from guardbot.sim.journal import Journal
from guardbot.sim.margin import ZERO, Market, usdc
from guardbot.sim.params import ISOLATED, EngineError
from guardbot.sim.records import Account, Order
from guardbot.sim.reports import Markets, Marks, account_figures, max_add

TAKER_FEE = Decimal("0.0006")
MAKER_FEE = Decimal("0.0003")


def fill(
    journal: Journal,
    account: Account,
    market: Market,
    mode: str,
    delta: Decimal,
    price: Decimal,
    fee_rate: Decimal,
    markets: Markets,
    marks: Marks,
) -> None:
    """Trade ``delta`` (signed) at ``price``: validate first, then apply in full."""
    key = (market.symbol, mode)
    position = account.position_or_empty(market.symbol, mode)
    if position.qty == 0:  # a new position takes the symbol's current leverage setting
        position.leverage = account.leverage(market.symbol, mode)
    before = position.qty
    closing = ZERO
    if before != 0 and (before > 0) != (delta > 0):
        closing = min(abs(delta), abs(before))
    opening = abs(delta) - closing
    fee = usdc(abs(delta) * price * fee_rate)
    new_margin = ZERO
    if mode == ISOLATED and opening:
        new_margin = m.isolated_fill_margin(price, opening, position.leverage)
    if opening:
        _check_opening(
            account,
            market,
            mode,
            opening,
            price,
            position.leverage,
            new_margin + fee,
            markets,
            marks,
        )
    released = ZERO
    realized = ZERO
    if closing:
        sign = 1 if before > 0 else -1
        realized = usdc(closing * (price - position.average_open_price) * sign)
        remaining = abs(before) - closing
        if mode == ISOLATED:
            released = (
                position.margin if remaining == 0 else usdc(position.margin * closing / abs(before))
            )
            position.margin -= released
        position.cost_position = usdc(position.cost_position * remaining / abs(before))
        position.qty = before - closing * sign
        if position.qty == 0:
            position.cost_position = ZERO
            position.average_open_price = ZERO
    if opening:
        signed_open = opening if delta > 0 else -opening
        position.qty += signed_open
        position.cost_position = usdc(position.cost_position + signed_open * price)
        position.average_open_price = (position.cost_position / position.qty).quantize(
            Decimal("0.00000001")
        )
        position.margin += new_margin
    account.holding += released + realized - new_margin - fee
    position.fee_24h += fee
    position.pnl_24h += realized - fee
    account.positions[key] = position
    journal.position_changed(account.account_id, position)
    journal.balance_changed(account)


def _check_opening(
    account: Account,
    market: Market,
    mode: str,
    opening: Decimal,
    price: Decimal,
    leverage: int,
    cash_needed: Decimal,
    markets: Markets,
    marks: Marks,
) -> None:
    if mode == ISOLATED:
        if cash_needed > max_add(account, markets, marks):
            raise EngineError(-1101, "Insufficient balance.")
        return
    notional = opening * price
    required = notional * m.imr(market, notional, leverage) + cash_needed
    if required > account_figures(account, markets, marks).free_collateral:
        raise EngineError(-1101, "Risk exposure is too high.")


def crossed(order: Order, marks: Marks) -> bool:
    """Whether the mark has reached a resting LIMIT order's price."""
    mark = marks[order.symbol]
    assert order.price is not None
    return mark <= order.price if order.side == "BUY" else mark >= order.price


def fill_resting(
    journal: Journal, account: Account, order: Order, markets: Markets, marks: Marks
) -> None:
    """Fill a resting order at its price (maker); a reduce-only order with nothing left to
    reduce, or one the balance no longer covers, is cancelled instead."""
    assert order.price is not None
    market = markets[order.symbol]
    order.frozen = ZERO
    signed = order.signed_quantity
    if order.reduce_only:
        reducing = reduce_only_quantity(account, order.symbol, order.margin_mode, signed)
        if reducing is None:
            order.status = "CANCELLED"
            return
        signed = reducing
    try:
        fill(
            journal,
            account,
            market,
            order.margin_mode,
            signed,
            order.price,
            MAKER_FEE,
            markets,
            marks,
        )
    except EngineError:
        # The balance went elsewhere while it rested (the exchange would reject it too).
        order.status = "CANCELLED"
        journal.balance_changed(account)
        return
    mark_filled(order, order.price, journal.clock())


def reduce_only_quantity(
    account: Account, symbol: str, mode: str, signed: Decimal
) -> Decimal | None:
    """The part of a reduce-only ``signed`` quantity that reduces the position in that slot
    (capped at its size), or ``None`` if it would not reduce it."""
    position = account.positions.get((symbol, mode))
    held = position.qty if position is not None else ZERO
    if held == 0 or (held > 0) == (signed > 0):
        return None
    return max(-abs(held), min(abs(held), signed))


def mark_filled(order: Order, price: Decimal, now_ms: int) -> None:
    order.status = "FILLED"
    order.executed = order.quantity
    order.average_executed_price = price
    order.updated_ms = now_ms
