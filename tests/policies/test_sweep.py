"""Sweep: excess down to safe, capped by the removable maximum, hysteresis validated."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from guardbot.domain import ActionKind
from guardbot.policies.base import PolicyContext, PolicyParamError, PositionView
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

from .conftest import LONG, RULES, ViewMaker

CTX = PolicyContext(now_ms=1_000)


@pytest.mark.parametrize(
    ("side", "changes", "amount"),
    [
        # long, margin 400: liquidation 63.16, distance 0.368. Safe 0.20 = liquidation at 80
        # needs 10*80*0.05 - 800 + 1000 = 240; removable 400 - 1000*0.1 = 300
        ("long", {"margin": D(400)}, D(160)),
        # short, margin 400: safe = liquidation at 120 needs 60 + 1200 - 1000 = 260
        ("short", {"margin": D(400)}, D(140)),
        # no liquidation price (margin above cost): still only down to safe
        ("long", {"margin": D(1200)}, D(960)),
        # leverage 3: IMR 1/3, removable 400 - 333.33.. = 66.66 (rounded down)
        ("long", {"margin": D(400), "leverage": 3}, D("66.66")),
        # leverage 2: IMR 0.5, nothing removable
        ("long", {"margin": D(400), "leverage": 2}, None),
        # an unrealized loss lowers the removable amount: 300 - 250 = 50; but the loss also
        # moves liquidation: with upnl -250 (cost 1250) safe needs 490, excess < 0
        ("long", {"margin": D(400), "cost_position": D(1250), "unsettled_pnl": D(-250)}, None),
        # excess 5 is below min_amount 10
        ("long", {"margin": D(245)}, None),
        # distance 0.158 is inside safe: never sweep
        ("long", {"margin": D(200)}, None),
    ],
)
def test_sweep(make_view: ViewMaker, side: str, changes: dict[str, D], amount: D | None) -> None:
    view = make_view(side, **changes)
    intents = Sweep().evaluate(view, CTX)
    if amount is None:
        assert intents == []
        return
    [intent] = intents
    assert (intent.kind, intent.amount, intent.policy) == (ActionKind.REDUCE, amount, "sweep")
    assert intent.amount <= view.max_removable
    after = view.distance_with_margin(view.position.margin - amount)
    assert after is None or after >= D("0.2")
    # sweeps are never more urgent than any top-up (distance < 1)
    assert intent.urgency > 1


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from(["long", "short"]),
    qty=st.decimals(min_value="0.01", max_value=2000, places=2),
    entry_move=st.decimals(min_value="-0.3", max_value="0.3", places=3),
    margin=st.decimals(min_value=0, max_value=500_000, places=2),
    leverage=st.integers(1, 50),
    imr_factor=st.sampled_from([D(0), D("2.5e-7"), D("4.5e-6")]),
)
def test_sweep_never_feeds_a_topup(
    side: str, qty: D, entry_move: D, margin: D, leverage: int, imr_factor: D
) -> None:
    """What a sweep leaves behind never triggers the default top-up (hysteresis), for
    longs and shorts, flat or growing maintenance ratios."""
    signed = qty if side == "long" else -qty
    position = replace(
        LONG,
        qty=signed,
        cost_position=signed * 100 * (1 + entry_move),
        unsettled_pnl=signed * 100 * -entry_move,
        margin=margin,
        leverage=leverage,
    )
    rules = replace(RULES, imr_factor=imr_factor)
    view = PositionView.of(position, rules)
    intents = Sweep().evaluate(view, CTX)
    event("swept" if intents else "nothing to sweep")
    for intent in intents:
        after = PositionView.of(replace(view.position, margin=margin - intent.amount), rules)
        assert after.distance is None or after.distance >= D("0.2") - D("1e-9")
        assert TopUp().evaluate(after, CTX) == []


@pytest.mark.parametrize(
    ("params", "param", "reason"),
    [
        ({"safe": "0"}, "safe", "must be > 0"),
        ({"min_amount": "0"}, "min_amount", "must be >= 0.01"),
        ({"safe": "1"}, "safe", "must be < 1"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, str], param: str, reason: str) -> None:
    with pytest.raises(PolicyParamError) as caught:
        Sweep(**params)
    assert caught.value.param == param
    assert caught.value.reason.startswith(reason)


def test_the_topup_params_it_once_took_are_gone() -> None:
    """Hysteresis against the top-ups is the loader's check (reduce_floor vs add_target)."""
    with pytest.raises(TypeError):
        Sweep(trigger="0.05")  # type: ignore[call-arg]
    assert Sweep(safe="0.1").reduce_floor == D("0.1")
