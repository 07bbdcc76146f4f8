"""Liquidation (guardbot/sim/liquidation.py), driven through the engine on a fixed clock."""

from __future__ import annotations

import contextlib
from decimal import ROUND_CEILING, Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.sim import margin
from guardbot.sim.engine import Engine
from guardbot.sim.margin import MARKETS
from guardbot.sim.params import EngineError

from .helpers import BTC, ETH, D, new_account, new_engine


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


@given(
    steps=st.lists(st.tuples(st.decimals(min_value=D("-0.02"), max_value=D("0.02"), places=4),
                             st.sampled_from(["", "ADD", "REDUCE", "REDUCE"]),
                             st.sampled_from(["3.5", "40", "250"])),
                   min_size=1, max_size=60),
)
@settings(max_examples=100, deadline=None)
def test_sparing_far_positions_the_test_liquidates_exactly_as_testing_all(
    steps: list[tuple[Decimal, str, str]],
) -> None:
    """The engine spares positions far from liquidation the exact test (``SafeMarks``): the
    same liquidations at the same marks, and the same seqs, as testing every position on
    every tick, also when margins change between ticks and cross positions are held."""

    def run(spare: bool) -> list[tuple[int, str, Decimal, Decimal]]:
        engine = new_engine()
        if not spare:
            engine._safe = None  # the reference: every position tested on every tick
        accounts = [new_account(engine, "100000") for _ in range(4)]
        for account_id, (qty, leverage) in zip(
                accounts, ((D(1), 20), (D(-1), 20), (D("0.5"), 2), (D(-2), 3)), strict=True):
            engine.open_position(account_id, ETH, "ISOLATED", qty, leverage)
        # Cross next to isolated: the account is tested on every tick.
        mixed = new_account(engine, "700")
        engine.open_position(mixed, ETH, "CROSS", D(1), 10)
        engine.open_position(mixed, ETH, "ISOLATED", D("0.1"), 10)
        accounts.append(mixed)
        mark = engine.marks[ETH]
        for move, call, amount in steps:
            mark = (mark * (1 + move)).quantize(D("0.01"))
            engine.advance({ETH: mark})
            for account_id in accounts:
                position = engine.accounts[account_id].positions[(ETH, "ISOLATED")]
                if call and position.qty:
                    with contextlib.suppress(EngineError):
                        engine.adjust_margin(account_id, ETH, call, amount)
        seqs = [p.seq for a in accounts for p in engine.accounts[a].positions.values()]
        return [(accounts.index(e.account_id), e.margin_mode, e.price, e.margin_lost)
                for e in engine.liquidations] + [(-1, "seqs", D(seq), D(0)) for seq in seqs]

    assert run(True) == run(False)


def test_a_margin_taken_out_moves_the_spared_marks_with_it(engine: Engine) -> None:
    """A short in profit takes margin out, and the mark comes back to the new liquidation
    price, short of the old one: liquidated there, not at the old price."""
    account_id = new_account(engine)
    engine.open_position(account_id, ETH, "ISOLATED", D(-1), 20)
    engine.advance({ETH: D(2800)})  # the spared marks are computed at the first margin
    state = engine.accounts[account_id]
    position = state.positions[(ETH, "ISOLATED")]
    before = margin.isolated_liquidation_price(MARKETS[ETH], position.margin, position.qty,
                                               position.cost_position)
    engine.adjust_margin(account_id, ETH, "REDUCE", format(engine.max_reduce(state, position)))
    after = margin.isolated_liquidation_price(MARKETS[ETH], position.margin, position.qty,
                                              position.cost_position)
    assert before is not None and after is not None and after < before - 1
    at = after.quantize(D("0.01"), rounding=ROUND_CEILING)
    engine.advance({ETH: at})
    (event,) = engine.liquidations
    assert event.price == at
