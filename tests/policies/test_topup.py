"""TopUp: trigger/target table, rounding up, validation at construction."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from guardbot import risk
from guardbot.domain import ActionKind, MarkPrice
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


def falling(start: D, per_s: D, seconds: int, now_ms: int = 10_000) -> tuple[MarkPrice, ...]:
    """Marks once a second up to ``now_ms``, the price moving by ``per_s`` of ``start`` a
    second (negative: falling)."""
    return tuple(MarkPrice("PERP_ALT_USDC", start * (1 + per_s * i), now_ms - (seconds - i) * 1000)
                 for i in range(seconds + 1))  # fmt: skip


def test_in_a_fall_too_fast_for_the_band_the_trigger_looks_ahead(make_view: ViewMaker) -> None:
    """At 5 %/s the next mark can carry a position from above the 5 % trigger past its
    liquidation price. A long 6.6 % away (margin 110: liquidates at 93.68 with mark 100.3)
    is rescued when the mark has fallen 5 %/s for 4 s: the trigger looks 1.5 s ahead (7.5 %)
    and the target moves out with it (7.5 % + 4 % = 11.5 %); in a slow fall it is not."""
    view = make_view("long", margin=D(110), mark_price=D("100.3"))
    assert view.distance is not None and D("0.05") < view.distance < D("0.075")
    fast = PolicyContext(now_ms=10_000, recent_marks=falling(D("125.375"), D("-0.05"), 4))
    [intent] = TopUp().evaluate(view, fast)
    assert "below trigger 0.075" in intent.reason and intent.rescue
    restored = view.distance_with_margin(view.position.margin + intent.amount)
    assert restored is not None and restored >= D("0.115")
    slow = PolicyContext(now_ms=10_000, recent_marks=falling(D("101.1"), D("-0.002"), 4))
    assert TopUp().evaluate(view, slow) == []
    assert TopUp(reach_s=0).evaluate(view, fast) == [], "no look-ahead without reach_s"


def test_the_look_ahead_follows_the_side_and_stops_at_max_trigger(make_view: ViewMaker) -> None:
    """A short looks at rises, not falls; however fast the move, the trigger stops at
    ``max_trigger``."""
    view = make_view("long", margin=D(110), mark_price=D("100.3"))
    rising = PolicyContext(now_ms=10_000, recent_marks=falling(D("80"), D("0.05"), 4))
    assert TopUp().evaluate(view, rising) == [], "a rise is no danger to a long"
    crash = PolicyContext(now_ms=10_000, recent_marks=falling(D("300"), D("-0.2"), 4))
    [intent] = TopUp(max_trigger="0.07").evaluate(view, crash)
    assert "below trigger 0.07" in intent.reason
    assert TopUp(max_trigger="0.07").acts_below == D("0.05"), "while the mark is calm"


def test_a_trigger_below_the_look_ahead_step_is_calm_only_while_the_mark_is_still() -> None:
    """``calm_while`` holds only below the trigger rounded down to the look-ahead's step;
    a trigger below that step promises calm at no speed at all (but stays positive)."""
    speed, window = TopUp(trigger="0.00005", target="0.01").calm_while or (None, None)
    assert speed is not None and D(0) < speed < D("1e-11") and window == D(5)
    assert TopUp(trigger="0.05005", reach_s=1).calm_while == (D("0.0500"), D(5))
