"""The change journal's ``seq`` (guardbot/sim/journal.py), as the engine hands it out."""

from __future__ import annotations

from guardbot.sim.engine import Engine

from .helpers import ETH, D, new_account


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
