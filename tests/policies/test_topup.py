"""TopUp: trigger/target table, rounding up, validation at construction."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from guardbot import risk
from guardbot.domain import ActionKind
from guardbot.policies.base import PolicyContext, PolicyParamError, PositionView
from guardbot.policies.topup import TopUp

from .conftest import LONG, RULES, ViewMaker

CTX = PolicyContext(now_ms=1_000)


@pytest.mark.parametrize(
    ("side", "changes", "amount"),
    [
        # long: liquidation (1000 - 60) / 9.5 = 98.95, distance 0.0105 < 0.05;
        # target 0.10 means liquidation at 90: margin 10*90*0.05 - 900 + 1000 = 145
        ("long", {"margin": D(60)}, D(85)),
        # already past liquidation (liq 105.26 > mark 100): the same formula, more margin
        ("long", {"margin": D(0)}, D(145)),
        # funding owed 0.001 makes it 145.001: rounded up, never short of the target
        ("long", {"margin": D(60), "unsettled_pnl": D("-0.001")}, D("85.01")),
        # short: liquidation (1000 + 40) / 10.5 = 99.05; target 110: 55 + 1100 - 1000 = 155
        ("short", {"margin": D(40)}, D(115)),
        # distance 0.158: nothing to do
        ("long", {"margin": D(200)}, None),
        # just at the trigger (liquidation 95 => margin 97.5): not below it
        ("long", {"margin": D("97.5")}, None),
        # no liquidation price at all
        ("long", {"margin": D(1000)}, None),
    ],
)
def test_topup(make_view: ViewMaker, side: str, changes: dict[str, D], amount: D | None) -> None:
    view = make_view(side, **changes)
    intents = TopUp(target="0.10").evaluate(view, CTX)
    if amount is None:
        assert intents == []
        return
    [intent] = intents
    assert (intent.kind, intent.amount, intent.policy) == (ActionKind.ADD, amount, "topup")
    assert intent.urgency == view.distance
    assert intent.rescue, "below the trigger: no cooldown may hold it back"
    assert "below trigger 0.05" in intent.reason
    restored = view.distance_with_margin(view.position.margin + amount)
    assert restored is not None and restored >= D("0.10")


def test_the_default_target_is_9_percent(make_view: ViewMaker) -> None:
    """Defaults: trigger 0.05, target 0.09 (the efficacy suite's choice, README). A long at
    1.05 % (margin 60) is topped up to liquidate at 91: 10*91*0.05 - 910 + 1000 = 135.5, so
    75.5 is added."""
    policy = TopUp()
    assert (policy.trigger, policy.target) == (D("0.05"), D("0.09"))
    [intent] = policy.evaluate(make_view("long", margin=D(60)), CTX)
    assert intent.amount == D("75.5") and intent.rescue


def test_custom_trigger_and_target(make_view: ViewMaker) -> None:
    view = make_view(margin=D(200))  # distance 0.158
    [intent] = TopUp(trigger="0.2", target=0.3).evaluate(view, CTX)
    # liquidation at 70: 35 - 700 + 1000 = 335
    assert intent.amount == D(135)


def test_margin_ratio_trigger(make_view: ViewMaker) -> None:
    # margin 200: distance 0.158, equity 200, maintenance 1000*0.05 = 50 (ratio 4)
    view = make_view(margin=D(200))
    assert TopUp(margin_ratio="4").evaluate(view, CTX) == []
    assert TopUp(margin_ratio="4", target="0.2").evaluate(view, CTX) == []
    # ratio 4.5 triggers; the target decides how much: 0.2 means liquidation at 80, 240
    [intent] = TopUp(margin_ratio="4.5", target="0.2").evaluate(view, CTX)
    assert intent.amount == D(40)
    assert intent.rescue
    assert intent.reason.startswith("equity 200.00 below 4.5 x maintenance margin 50.00")
    # already at the target distance: nothing to add even though the ratio trips
    assert TopUp(margin_ratio="4.5").evaluate(view, CTX) == []


@pytest.mark.parametrize(
    ("params", "param", "reason"),
    [
        ({"trigger": "0"}, "trigger", "must be > 0"),
        ({"trigger": "x"}, "trigger", "must be a number"),
        ({"target": "1"}, "target", "must be < 1"),
        ({"trigger": "0.1", "target": "0.1"}, "target", "must be above trigger (0.1)"),
        ({"margin_ratio": "1"}, "margin_ratio", "must be > 1"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, str], param: str, reason: str) -> None:
    with pytest.raises(PolicyParamError) as caught:
        TopUp(**params)
    assert caught.value.param == param
    assert caught.value.reason.startswith(reason)


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from(["long", "short"]),
    qty=st.decimals(min_value="0.01", max_value=2000, places=2),
    entry_move=st.decimals(min_value="-0.3", max_value="0.3", places=3),
    margin_fraction=st.decimals(min_value=0, max_value="0.2", places=4),
    imr_factor=st.sampled_from([D(0), D("2.5e-7"), D("4.5e-6")]),
)
def test_topup_adds_exactly_what_restores_the_target(
    side: str, qty: D, entry_move: D, margin_fraction: D, imr_factor: D
) -> None:
    """The amount restores the target distance, and one cent less would not: nothing is
    spent beyond the rounding step."""
    signed = qty if side == "long" else -qty
    position = replace(
        LONG,
        qty=signed,
        cost_position=signed * 100 * (1 + entry_move),
        unsettled_pnl=signed * 100 * -entry_move,
        margin=qty * 100 * margin_fraction,
    )
    rules = replace(RULES, imr_factor=imr_factor)
    assume(risk.mmr(qty * 200, rules) < D("0.4"))  # within any leverage the exchange allows
    view = PositionView.of(position, rules)
    intents = TopUp(target="0.10").evaluate(view, CTX)
    event("topped up" if intents else "no top-up")
    if not intents:
        assert view.distance is None or view.distance >= D("0.05")
        return
    [intent] = intents
    after = view.distance_with_margin(position.margin + intent.amount)
    assert after is None or after >= D("0.10") - D("1e-9")
    short_by_a_cent = view.distance_with_margin(position.margin + intent.amount - D("0.01"))
    assert short_by_a_cent is not None and short_by_a_cent < D("0.10")
