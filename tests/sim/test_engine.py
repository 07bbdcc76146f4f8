"""The sans-I/O engine, driven directly with an injected clock."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.sim.engine import Engine, EngineError
from guardbot.sim.keys import generate_key

D = Decimal
ETH = "PERP_ETH_USDC"
BTC = "PERP_BTC_USDC"


@pytest.fixture
def engine() -> Engine:
    return Engine(clock=lambda: 1_700_000_000_000)


def new_account(engine: Engine, usdc: str = "10000") -> str:
    return engine.create_account(generate_key()[0], usdc_amount=D(usdc))


def test_isolated_liquidation_touches_nothing_else(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)  # margin 301.8 @ 3000
    engine.open_position(account_id, ETH, "CROSS", D("0.5"), 10)
    engine.open_position(account_id, BTC, "ISOLATED", D("0.01"), 10)
    account = engine.accounts[account_id]
    holding = account.holding
    cross = engine.position_view(account, ETH, "CROSS")
    btc = engine.position_view(account, BTC, "ISOLATED")
    engine.drain_changes()

    engine.pin_mark(ETH, D("2714.48"))  # one tick below the liquidation price 2714.49

    liquidated = engine.position_view(account, ETH, "ISOLATED")
    assert liquidated.qty == 0 and liquidated.margin == 0
    (event,) = engine.liquidations
    assert (event.symbol, event.margin_mode, event.margin_lost) == (ETH, "ISOLATED", D("301.8"))
    # remaining equity 301.8 + 2714.48 - 3000 = 16.28 goes to the insurance fund
    assert event.to_insurance_fund == D("16.28") and engine.insurance_fund == D("16.28")
    assert account.holding == holding
    cross_after = engine.position_view(account, ETH, "CROSS")
    assert (cross_after.qty, cross_after.cost_position) == (cross.qty, cross.cost_position)
    assert engine.position_view(account, BTC, "ISOLATED").margin == btc.margin
    assert (ETH, "ISOLATED") in engine.drain_changes().positions[account_id]


def test_position_survives_at_its_liquidation_price(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    engine.pin_mark(ETH, D("2714.49"))
    assert engine.liquidations == []


def test_cross_liquidation_closes_cross_positions_only(engine: Engine) -> None:
    account_id = new_account(engine, "400")
    engine.open_position(account_id, BTC, "ISOLATED", D("0.001"), 10)  # margin 6.036, fee 0.036
    engine.open_position(account_id, ETH, "CROSS", D(1), 10)  # fee 1.8
    account = engine.accounts[account_id]
    assert account.holding == D("392.128")
    # cross equity 392.128 + (P - 3000) meets maintenance 0.006*P at P = 2607.872/0.994
    engine.pin_mark(ETH, D("2623.62"))
    assert engine.liquidations == []
    engine.pin_mark(ETH, D("2623.61"))
    (event,) = engine.liquidations
    assert (event.symbol, event.margin_mode) == (ETH, "CROSS")
    assert engine.position_view(account, ETH, "CROSS").qty == 0
    # 15.738 left after the -376.39 loss; the liquidation fee (1.2 % of 2623.61) takes it all
    assert account.holding == 0 and engine.insurance_fund == D("15.738")
    assert (event.margin_lost, event.to_insurance_fund) == (D("392.128"), D("15.738"))
    btc = engine.position_view(account, BTC, "ISOLATED")
    assert btc.qty == D("0.001") and btc.margin == D("6.036")


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


@pytest.mark.parametrize(
    ("symbol", "kind", "amount", "code"),
    [
        (ETH, "ADD", "0", -1005),
        (ETH, "ADD", "-5", -1005),
        (ETH, "ADD", "abc", -1005),
        (ETH, "ADD", "1.0000001", -1005),
        (ETH, "ADD", True, -1005),
        (ETH, "MOVE", "5", -1005),
        ("PERP_DOGE_USDC", "ADD", "5", -1005),
        (BTC, "ADD", "5", -1006),  # no isolated position there
        (ETH, "ADD", "10000", -1101),  # more than the free balance
        (ETH, "REDUCE", "1.800001", -1101),  # removable maximum is 1.8
        (ETH, "ADD", None, -1005),
    ],
)
def test_position_margin_refusals_change_nothing(
    engine: Engine, symbol: str, kind: str, amount: object, code: int
) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    account = engine.accounts[account_id]
    before = (account.holding, engine.position_view(account, ETH, "ISOLATED"))
    with pytest.raises(EngineError) as refused:
        engine.adjust_margin(account_id, symbol, kind, amount)
    assert refused.value.code == code and refused.value.message
    assert (account.holding, engine.position_view(account, ETH, "ISOLATED")) == before


def test_reduce_exactly_the_maximum_is_accepted(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    account = engine.accounts[account_id]
    position = account.positions[(ETH, "ISOLATED")]
    assert engine.max_reduce(account, position) == D("1.8")
    engine.adjust_margin(account_id, ETH, "REDUCE", "1.8")
    assert position.margin == D(300)


def test_add_is_limited_by_free_balance(engine: Engine) -> None:
    account_id = new_account(engine, "1000")
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)  # holding 1000-301.8-1.8
    account = engine.accounts[account_id]
    assert engine.max_add(account) == D("696.4")
    engine.adjust_margin(account_id, ETH, "ADD", "696.4")
    assert account.holding == 0


def test_leverage_rules_on_open_isolated_position(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    account = engine.accounts[account_id]
    engine.set_leverage(account_id, 20, ETH, "ISOLATED")  # raising keeps the margin
    assert engine.position_view(account, ETH, "ISOLATED").margin == D("301.8")
    with pytest.raises(EngineError) as refused:  # 3x needs 1000 of margin
        engine.set_leverage(account_id, 3, ETH, "ISOLATED")
    assert refused.value.code == -1101
    assert engine.leverage(account, ETH, "ISOLATED") == 20
    with pytest.raises(EngineError):
        engine.set_leverage(account_id, 11, "PERP_SOL_USDC", "CROSS")  # alt max is 10


def test_batch_leverage_skips_busy_isolated_symbols(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    changed = engine.set_leverage(account_id, 50, None, "ISOLATED")
    assert (ETH, "ISOLATED", 50) not in changed
    assert (BTC, "ISOLATED", 50) in changed and ("PERP_SOL_USDC", "ISOLATED", 10) in changed


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


def test_market_and_reduce_only_orders(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.place_order(account_id, ETH, "MARKET", "SELL", "2", None, "CROSS")
    account = engine.accounts[account_id]
    assert engine.position_view(account, ETH, "CROSS").qty == D(-2)
    with pytest.raises(EngineError):
        engine.place_order(account_id, ETH, "MARKET", "SELL", "1", None, "CROSS", True)
    engine.place_order(account_id, ETH, "MARKET", "BUY", "5", None, "CROSS", True)
    assert engine.position_view(account, ETH, "CROSS").qty == 0  # capped at the position


def test_cancel_order_releases_frozen_margin(engine: Engine) -> None:
    account_id = new_account(engine)
    order = engine.place_order(account_id, ETH, "LIMIT", "SELL", "1", "3500", "ISOLATED")
    engine.cancel_order(account_id, order.order_id)
    assert engine.holding_view(engine.accounts[account_id]).isolated_order_frozen == 0
    with pytest.raises(EngineError) as refused:
        engine.cancel_order(account_id, order.order_id)
    assert refused.value.code == -1006


def test_default_margin_mode_change_refused_with_a_position(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.set_default_margin_mode(account_id, ETH, "ISOLATED")
    engine.place_order(account_id, ETH, "MARKET", "BUY", "1")
    assert engine.accounts[account_id].positions[(ETH, "ISOLATED")].qty == 1
    with pytest.raises(EngineError) as refused:
        engine.set_default_margin_mode(account_id, ETH, "CROSS")
    assert refused.value.code == -1012


def test_seq_grows_on_every_change_including_marks(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    account = engine.accounts[account_id]
    first = engine.position_view(account, ETH, "ISOLATED").seq
    engine.advance({ETH: D(3001)})
    second = engine.position_view(account, ETH, "ISOLATED").seq
    engine.adjust_margin(account_id, ETH, "ADD", "1")
    assert first < second < engine.position_view(account, ETH, "ISOLATED").seq
    assert first > 2**53


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["ADD", "REDUCE"]),
            st.decimals(min_value="0.000001", max_value="12000", places=6),
        ),
        max_size=25,
    ),
    mark=st.decimals(min_value="2750", max_value="3300", places=2),
)
def test_margin_moves_conserve_money_and_keep_initial_margin(
    steps: list[tuple[str, Decimal]], mark: Decimal
) -> None:
    """Whatever ADD/REDUCE sequence arrives, each call either applies exactly or changes
    nothing, the account's USDC (holding + isolated margin) is conserved, and a REDUCE never
    leaves less than the initial margin plus any unrealized loss."""
    engine = Engine(clock=lambda: 1_700_000_000_000)
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(1), 10)
    engine.pin_mark(ETH, mark)
    account = engine.accounts[account_id]
    position = account.positions[(ETH, "ISOLATED")]
    total = account.holding + position.margin
    for kind, amount in steps:
        before = position.margin
        try:
            engine.adjust_margin(account_id, ETH, kind, str(amount))
        except EngineError as refused:
            assert refused.code == -1101
            assert position.margin == before
        else:
            assert position.margin == before + (amount if kind == "ADD" else -amount)
        assert account.holding + position.margin == total
        assert account.holding >= 0 and position.margin >= 0
        if kind == "REDUCE" and position.margin != before:
            upnl = position.qty * mark - position.cost_position
            assert position.margin + min(upnl, D(0)) >= mark * D("0.1")


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
    engine = Engine(clock=lambda: 1_700_000_000_000)
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


def test_lowering_cross_leverage_needs_free_collateral(engine: Engine) -> None:
    account_id = new_account(engine, "1000")
    engine.open_position(account_id, ETH, "CROSS", D(2), 10)  # IM 600 of ~996 collateral
    with pytest.raises(EngineError) as refused:  # 2x would need 3000
        engine.set_leverage(account_id, 2, ETH, "CROSS")
    assert refused.value.code == -1101
    assert engine.leverage(engine.accounts[account_id], ETH, "CROSS") == 10
    engine.set_leverage(account_id, 8, ETH, "CROSS")  # 750: affordable
    assert engine.position_view(engine.accounts[account_id], ETH, "CROSS").leverage == 8


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


def test_isolated_limit_order_needs_the_margin_it_freezes(engine: Engine) -> None:
    account_id = new_account(engine, "100")
    with pytest.raises(EngineError) as refused:  # 3 ETH at 2900, 10x: 875.22 to freeze
        engine.place_order(account_id, ETH, "LIMIT", "BUY", "3", "2900", "ISOLATED")
    assert refused.value.code == -1101
    assert engine.accounts[account_id].orders == {}
