"""Fills (guardbot/sim/fills.py): what trades do to positions and USDC, and resting orders
filling when the mark crosses them; driven through the engine on a fixed clock."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.sim.engine import Engine
from guardbot.sim.params import EngineError

from .helpers import ETH, D, new_account, new_engine


def test_partial_close_releases_margin_pro_rata_and_full_close_all(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(2), 10)  # margin 603.6
    account = engine.accounts[account_id]
    engine.adjust_margin(account_id, ETH, "ADD", "100")  # 703.6
    holding = account.holding
    engine.open_position(account_id, ETH, "ISOLATED", D("-0.5"), None)
    view = engine.position_view(account, ETH, "ISOLATED")
    assert view.qty == D("1.5") and view.margin == D("527.7")  # 703.6 * 1.5/2
    # released 175.9, no PnL at the same mark, taker fee 0.9
    assert account.holding == holding + D("175.9") - D("0.9")
    engine.open_position(account_id, ETH, "ISOLATED", D("-1.5"), None)
    assert engine.position_view(account, ETH, "ISOLATED").margin == 0
    assert engine.holding_view(account).isolated_margin == 0


def test_flip_reallocates_margin_for_the_new_side(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    engine.open_position(account_id, ETH, "ISOLATED", D(-3), None)
    view = engine.position_view(engine.accounts[account_id], ETH, "ISOLATED")
    assert view.qty == D(-2) and view.margin == D("603.6") and view.cost_position == D(-6000)


def test_realized_pnl_settles_to_holding(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "CROSS", D(1), 10)
    account = engine.accounts[account_id]
    holding = account.holding
    engine.pin_mark(ETH, D(3100))
    engine.open_position(account_id, ETH, "CROSS", D(-1), None)
    assert account.holding == holding + D(100) - D("1.86")  # fee 0.06 % of 3100


def test_limit_order_rests_then_fills_when_mark_crosses(engine: Engine) -> None:
    account_id = new_account(engine)
    account = engine.accounts[account_id]
    order = engine.place_order(account_id, ETH, "LIMIT", "BUY", "1", "2900", "ISOLATED")
    assert order.status == "NEW"
    assert engine.holding_view(account).isolated_order_frozen == D("291.74")  # 2900*0.1006
    assert engine.position_view(account, ETH, "ISOLATED").pending_long_qty == D(1)
    engine.pin_mark(ETH, D(2950))
    assert order.status == "NEW"
    engine.pin_mark(ETH, D(2899))
    assert order.status == "FILLED" and order.average_executed_price == D(2900)
    view = engine.position_view(account, ETH, "ISOLATED")
    assert view.qty == 1 and view.margin == D("291.74")
    assert engine.holding_view(account).isolated_order_frozen == 0


def test_resting_reduce_only_order_is_cancelled_if_nothing_is_left_to_reduce(
    engine: Engine,
) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "CROSS", D(1), 10)
    order = engine.place_order(account_id, ETH, "LIMIT", "SELL", "1", "3200", "CROSS", True)
    engine.open_position(account_id, ETH, "CROSS", D(-1))  # closed by other means
    engine.pin_mark(ETH, D(3200))
    assert order.status == "CANCELLED"
    assert engine.position_view(engine.accounts[account_id], ETH, "CROSS").qty == 0


@settings(max_examples=60, deadline=None)
@given(
    trades=st.lists(
        st.tuples(
            st.sampled_from(["CROSS", "ISOLATED"]),
            st.decimals(min_value="-3", max_value="3", places=2).filter(lambda q: q != 0),
            st.decimals(min_value="2900", max_value="3100", places=2),
        ),
        max_size=20,
    )
)
def test_fills_account_for_every_usdc(trades: list[tuple[str, Decimal, Decimal]]) -> None:
    """Over any sequence of opens, adds, partial closes and flips (no liquidation in this
    price band at 2x), the account's USDC (holding + isolated margin) is the deposit plus
    realized PnL minus fees, to the micro-USDC, and closed isolated positions hold nothing."""
    engine = new_engine()
    account_id = new_account(engine, "100000")
    engine.set_leverage(account_id, 2, ETH, "ISOLATED")
    engine.set_leverage(account_id, 2, ETH, "CROSS")
    account = engine.accounts[account_id]
    for mode, qty, mark in trades:
        engine.pin_mark(ETH, mark)
        try:
            engine.open_position(account_id, ETH, mode, qty)
        except EngineError as refused:
            assert refused.code in (-1101, -1102)
        positions = account.positions.values()
        usdc = account.holding + sum((p.margin for p in positions), D(0))
        assert usdc == D(100000) + sum((p.pnl_24h for p in positions), D(0))
        for position in positions:
            assert position.margin >= 0
            if position.qty == 0:
                assert position.margin == 0 and position.cost_position == 0
    assert engine.liquidations == []
