"""The sans-I/O engine, driven directly with an injected clock: margin moves and orders."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.sim.engine import Engine
from guardbot.sim.params import EngineError

from .helpers import BTC, ETH, D, new_account, new_engine


@pytest.mark.parametrize(
    ("symbol", "kind", "amount", "code"),
    [
        (ETH, "ADD", "0", -1005),
        (ETH, "ADD", "-5", -1005),
        (ETH, "ADD", "abc", -1005),
        (ETH, "ADD", "1.0000001", -1005),
        (ETH, "ADD", True, -1005),
        (ETH, "MOVE", "5", -1005),
        ("PERP_NOPE_USDC", "ADD", "5", -1005),
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
    engine = new_engine()
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


def test_isolated_limit_order_needs_the_margin_it_freezes(engine: Engine) -> None:
    account_id = new_account(engine, "100")
    with pytest.raises(EngineError) as refused:  # 3 ETH at 2900, 10x: 875.22 to freeze
        engine.place_order(account_id, ETH, "LIMIT", "BUY", "3", "2900", "ISOLATED")
    assert refused.value.code == -1101
    assert engine.accounts[account_id].orders == {}
