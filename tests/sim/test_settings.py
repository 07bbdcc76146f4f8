"""Leverage and default margin mode (guardbot/sim/settings.py), through the engine on a fixed
clock."""

from __future__ import annotations

import pytest

from guardbot.sim.engine import Engine
from guardbot.sim.params import EngineError

from .helpers import BTC, ETH, D, new_account


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


def test_lowering_cross_leverage_needs_free_collateral(engine: Engine) -> None:
    account_id = new_account(engine, "1000")
    engine.open_position(account_id, ETH, "CROSS", D(2), 10)  # IM 600 of ~996 collateral
    with pytest.raises(EngineError) as refused:  # 2x would need 3000
        engine.set_leverage(account_id, 2, ETH, "CROSS")
    assert refused.value.code == -1101
    assert engine.leverage(engine.accounts[account_id], ETH, "CROSS") == 10
    engine.set_leverage(account_id, 8, ETH, "CROSS")  # 750: affordable
    assert engine.position_view(engine.accounts[account_id], ETH, "CROSS").leverage == 8


def test_default_margin_mode_change_refused_with_a_position(engine: Engine) -> None:
    account_id = new_account(engine)
    engine.set_default_margin_mode(account_id, ETH, "ISOLATED")
    engine.place_order(account_id, ETH, "MARKET", "BUY", "1")
    assert engine.accounts[account_id].positions[(ETH, "ISOLATED")].qty == 1
    with pytest.raises(EngineError) as refused:
        engine.set_default_margin_mode(account_id, ETH, "CROSS")
    assert refused.value.code == -1012
