"""What the simulator reports (guardbot/sim/reports.py), computed from hand-built accounts."""

from __future__ import annotations

from decimal import Decimal

from guardbot.sim.margin import MARKETS
from guardbot.sim.records import Account, Order, PositionState
from guardbot.sim.reports import (
    account_figures,
    cross_maintenance,
    holding_row,
    pending,
    position_row,
)

D = Decimal
ETH = "PERP_ETH_USDC"
MARKS = {symbol: market.start_price for symbol, market in MARKETS.items()}  # ETH 3000


def account_with(*positions: PositionState, holding: str = "1000") -> Account:
    account = Account("0x" + "0" * 64, D(holding))
    for position in positions:
        account.positions[(position.symbol, position.margin_mode)] = position
    return account


def test_an_empty_slot_reports_a_zero_position_at_the_leverage_setting() -> None:
    account = account_with()
    account.leverages[(ETH, "ISOLATED")] = 7
    row = position_row(account, ETH, "ISOLATED", MARKETS, MARKS)
    assert (row.qty, row.margin, row.leverage, row.mark_price) == (0, 0, 7, D(3000))
    assert row.est_liq_price is None and row.unsettled_pnl == 0
    assert account.positions == {}  # reporting stores nothing


def test_cross_figures_and_maintenance() -> None:
    cross = PositionState(ETH, "CROSS", 10, qty=D(1), cost_position=D(2900))
    isolated = PositionState(ETH, "ISOLATED", 10, qty=D(1), cost_position=D(3000), margin=D(300))
    account = account_with(cross, isolated)
    assert cross_maintenance(account, MARKETS, MARKS) == D(18)  # 3000 * 0.006; cross only
    figures = account_figures(account, MARKETS, MARKS)
    assert figures.total_collateral_value == D(1100)  # holding + the cross upnl of 100
    assert figures.free_collateral == D(800)  # less 3000 * 1/10
    assert figures.account_value == D(1400)  # plus the isolated equity
    assert figures.margin_ratio == D(1100) / D(3000)
    assert account_figures(account_with(), MARKETS, MARKS).margin_ratio == 10  # no positions


def test_resting_orders_are_pending_and_frozen() -> None:
    account = account_with()
    for number, side in ((1, "BUY"), (2, "SELL")):
        account.orders[number] = Order(
            number,
            account.account_id,
            ETH,
            side,
            "LIMIT",
            D(2),
            D(2900),
            "ISOLATED",
            False,
            None,
            0,
            frozen=D("291.74"),
        )
    account.orders[2].status = "FILLED"
    assert pending(account, ETH, "ISOLATED") == (D(2), 0)
    assert pending(account, ETH, "CROSS") == (0, 0)
    holding = holding_row(account)
    assert holding.isolated_order_frozen == D("291.74") and holding.holding == D(1000)
