"""Liquidation (guardbot/sim/liquidation.py), driven through the engine on a fixed clock."""

from __future__ import annotations

from guardbot.sim.engine import Engine

from .helpers import BTC, ETH, D, new_account


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
