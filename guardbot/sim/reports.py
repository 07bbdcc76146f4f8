"""What the simulated exchange reports about an account at the current marks: position rows,
the account-level figures and the holding row (docs/exchange.md §4, §7), as pure functions of
the account, the markets and the marks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from guardbot.sim import margin as m
from guardbot.sim.margin import ZERO, Market, usdc
from guardbot.sim.params import CROSS, ISOLATED
from guardbot.sim.records import Account, PositionState

Markets = Mapping[str, Market]
Marks = Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class PositionRow:
    """Everything ``Position`` reports (§4), computed at the current mark."""

    symbol: str
    margin_mode: str
    qty: Decimal
    cost_position: Decimal
    average_open_price: Decimal
    mark_price: Decimal
    margin: Decimal
    leverage: int
    unsettled_pnl: Decimal
    imr: Decimal
    mmr: Decimal
    imr_with_orders: Decimal
    mmr_with_orders: Decimal
    est_liq_price: Decimal | None
    pending_long_qty: Decimal
    pending_short_qty: Decimal
    fee_24h: Decimal
    pnl_24h: Decimal
    seq: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class AccountFigures:
    """The account-level figures of ``GET /v1/positions`` and ``/v1/account_info`` (§4, §7):
    cross collateral only, as js-sdk computes it."""

    total_collateral_value: Decimal
    free_collateral: Decimal
    account_value: Decimal
    margin_ratio: Decimal
    initial_margin_ratio: Decimal
    maintenance_margin_ratio: Decimal
    total_pnl_24h: Decimal


@dataclass(frozen=True, slots=True)
class HoldingRow:
    """The USDC row of ``GET /v1/client/holding``."""

    holding: Decimal
    frozen: Decimal
    pending_short: Decimal
    isolated_margin: Decimal
    isolated_order_frozen: Decimal
    updated_ms: int


def upnl(position: PositionState, marks: Marks) -> Decimal:
    return position.qty * marks[position.symbol] - position.cost_position


def isolated_order_frozen(account: Account) -> Decimal:
    if not account.orders:
        return ZERO
    return sum((o.frozen for o in account.resting_orders()), ZERO)


def pending(account: Account, symbol: str, mode: str) -> tuple[Decimal, Decimal]:
    """``(pending_long_qty, pending_short_qty)`` of the resting orders on that slot."""
    long_qty = short_qty = ZERO
    if not account.orders:
        return long_qty, short_qty
    for order in account.resting_orders():
        if order.symbol == symbol and order.margin_mode == mode:
            if order.side == "BUY":
                long_qty += order.quantity
            else:
                short_qty -= order.quantity
    return long_qty, short_qty


def cross_maintenance(account: Account, markets: Markets, marks: Marks) -> Decimal:
    """``Σ notional * MMR`` over the account's open cross positions."""
    total = ZERO
    for position in account.open_positions():
        if position.margin_mode == CROSS:
            notional = abs(position.qty) * marks[position.symbol]
            total += notional * m.mmr(markets[position.symbol], notional)
    return total


def position_row(
    account: Account, symbol: str, margin_mode: str, markets: Markets, marks: Marks
) -> PositionRow:
    """The position as the exchange reports it; a zero position if there is none."""
    position = account.position_or_empty(symbol, margin_mode)
    market = markets[symbol]
    mark = marks[symbol]
    notional = abs(position.qty) * mark
    pending_long, pending_short = pending(account, symbol, margin_mode)
    with_orders = notional + (pending_long - pending_short) * mark
    liq: Decimal | None = None
    if position.qty != 0:
        if margin_mode == ISOLATED:
            liq = m.isolated_liquidation_price(
                market, position.margin, position.qty, position.cost_position
            )
        else:
            liq = m.cross_liquidation_price(
                market,
                position.qty,
                mark,
                account_figures(account, markets, marks).total_collateral_value,
                cross_maintenance(account, markets, marks),
            )
    imr = m.imr(market, notional, position.leverage)
    mmr = m.mmr(market, notional)
    if with_orders != notional:  # resting orders (the same figures otherwise)
        imr_with_orders = m.imr(market, with_orders, position.leverage)
        mmr_with_orders = m.mmr(market, with_orders)
    else:
        imr_with_orders, mmr_with_orders = imr, mmr
    return PositionRow(
        symbol=symbol,
        margin_mode=margin_mode,
        qty=position.qty,
        cost_position=position.cost_position,
        average_open_price=position.average_open_price,
        mark_price=mark,
        margin=position.margin,
        leverage=position.leverage,
        unsettled_pnl=usdc(upnl(position, marks)),
        imr=imr,
        mmr=mmr,
        imr_with_orders=imr_with_orders,
        mmr_with_orders=mmr_with_orders,
        est_liq_price=None if liq is None else liq.quantize(market.quote_tick),
        pending_long_qty=pending_long,
        pending_short_qty=pending_short,
        fee_24h=position.fee_24h,
        pnl_24h=position.pnl_24h,
        seq=position.seq,
        updated_ms=position.updated_ms,
    )


def account_figures(account: Account, markets: Markets, marks: Marks) -> AccountFigures:
    collateral = account.holding - isolated_order_frozen(account)
    notional_total = initial = maintenance = ZERO
    isolated_equity = ZERO
    pnl = ZERO
    for position in account.open_positions():
        market = markets[position.symbol]
        mark = marks[position.symbol]
        pnl += position.pnl_24h
        if position.margin_mode == ISOLATED:
            isolated_equity += position.margin + upnl(position, marks)
            continue
        notional = abs(position.qty) * mark
        collateral += upnl(position, marks)
        notional_total += notional
        pending_long, pending_short = pending(account, position.symbol, CROSS)
        with_orders = notional + (pending_long - pending_short) * mark
        initial += with_orders * m.imr(market, with_orders, position.leverage)
        maintenance += notional * m.mmr(market, notional)
    collateral = usdc(collateral)
    return AccountFigures(
        total_collateral_value=collateral,
        free_collateral=usdc(max(ZERO, collateral - initial)),
        account_value=usdc(collateral + isolated_equity),
        # §7: 1000 % with no positions.
        margin_ratio=collateral / notional_total if notional_total else Decimal(10),
        initial_margin_ratio=initial / notional_total if notional_total else ZERO,
        maintenance_margin_ratio=maintenance / notional_total if notional_total else ZERO,
        total_pnl_24h=pnl,
    )


def holding_row(account: Account) -> HoldingRow:
    return HoldingRow(
        holding=account.holding,
        frozen=ZERO,
        pending_short=ZERO,
        isolated_margin=sum(
            (p.margin for p in account.positions.values() if p.margin_mode == ISOLATED),
            ZERO,
        ),
        isolated_order_frozen=isolated_order_frozen(account),
        updated_ms=account.updated_ms,
    )


def max_add(account: Account, markets: Markets, marks: Marks) -> Decimal:
    """The most ``position_margin`` ADD accepts: USDC the account can spare,
    ``max(0, min(holding - frozen, free_collateral - max(Σ cross upnl, 0)))`` (§7 formula A)."""
    figures = account_figures(account, markets, marks)
    cross_upnl = sum(
        (upnl(p, marks) for p in account.open_positions() if p.margin_mode == CROSS), ZERO
    )
    spare = min(
        account.holding - isolated_order_frozen(account),
        figures.free_collateral - max(cross_upnl, ZERO),
    )
    return m.usdc_down(max(ZERO, spare))


def max_reduce(position: PositionState, markets: Markets, marks: Marks) -> Decimal:
    """The most ``position_margin`` REDUCE accepts on an isolated position (margin.py)."""
    return m.isolated_max_reduce(
        markets[position.symbol],
        position.margin,
        position.qty,
        position.cost_position,
        marks[position.symbol],
        position.leverage,
    )
