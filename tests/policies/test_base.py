"""PositionView, PolicyContext defaults and parameter parsing."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest

from guardbot.domain import ActionKind, MarginMode
from guardbot.policies.base import (
    Policy,
    PolicyContext,
    PolicyParamError,
    PositionView,
    Quiet,
    decimal_param,
    declared_quiet,
)
from guardbot.policies.sweep import Sweep
from guardbot.policies.topup import TopUp

from .conftest import ViewMaker


def test_view_precomputes_the_risk_figures(make_view: ViewMaker) -> None:
    view = make_view(margin=D(200))
    assert view.liquidation_price == D(800) / D("9.5")
    assert view.distance == 1 - D(800) / D("9.5") / 100
    assert view.max_removable == D(100)
    assert view.margin_for_distance(D("0.2")) == D(240)
    assert view.distance_with_margin(D(240)) == D("0.2")


def test_view_distance_is_negative_past_liquidation(make_view: ViewMaker) -> None:
    view = make_view(margin=D(0))  # liquidation at 105.26 > mark 100
    assert view.distance is not None and view.distance < 0


def test_view_refuses_what_policies_must_not_see(make_view: ViewMaker) -> None:
    position = make_view().position
    with pytest.raises(ValueError, match="isolated"):
        PositionView.of(replace(position, margin_mode=MarginMode.CROSS), make_view().rules)
    with pytest.raises(ValueError, match="closed"):
        PositionView.of(replace(position, qty=D(0)), make_view().rules)
    with pytest.raises(ValueError, match="rules for"):
        PositionView.of(replace(position, symbol="PERP_X_USDC"), make_view().rules)


def test_intent_defaults_urgency_to_distance(make_view: ViewMaker) -> None:
    view = make_view(margin=D(60))
    intent = view.intent(ActionKind.ADD, D(5), "p", "why", note="x")
    assert (intent.account_id, intent.symbol) == (view.position.account_id, "PERP_ALT_USDC")
    assert intent.urgency == view.distance
    assert intent.details == {"note": "x"}
    no_risk = make_view(margin=D(2000))
    assert no_risk.intent(ActionKind.REDUCE, D(5), "p", "why").urgency == D(1)


def test_context_defaults() -> None:
    ctx = PolicyContext(now_ms=5)
    assert (ctx.free_balance, ctx.recent_marks, ctx.original_margin) == (None, (), None)
    assert ctx.net_added == 0 and dict(ctx.params) == {}


def test_protocol_is_structural() -> None:
    class Nothing:
        name = "nothing"

        def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[object]:
            return []

    assert isinstance(Nothing(), Policy)
    assert not isinstance(object(), Policy)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.05", D("0.05")), (0.05, D("0.05")), (3, D(3)), (D("0.1"), D("0.1")), (" 2 ", D(2))],
)
def test_decimal_param_parses(value: object, expected: D) -> None:
    assert decimal_param("x", value, low=D(0), high=D(10)) == expected


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        ("abc", {}, "x: must be a number, got 'abc'"),
        (True, {}, "x: must be a number, got True"),
        ([1], {}, "x: must be a number"),
        ("NaN", {}, "x: must be finite"),
        ("Infinity", {}, "x: must be finite"),
        ("-1", {"low": D(0)}, "x: must be >= 0, got -1"),
        ("0", {"low": D(0), "low_inclusive": False}, "x: must be > 0, got 0"),
        ("2", {"high": D(1)}, "x: must be <= 1, got 2"),
        ("1", {"high": D(1), "high_inclusive": False}, "x: must be < 1, got 1"),
    ],
)
def test_decimal_param_refuses(value: object, bounds: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyParamError) as caught:
        decimal_param("x", value, **bounds)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert caught.value.param == "x"


def test_quiet_bands_intersect() -> None:
    topup, sweep = Quiet(low=D("0.05")), Quiet(high=D("0.2"))
    assert topup & sweep == Quiet(D("0.05"), D("0.2"))
    assert topup & Quiet(low=D("0.08")) == Quiet(low=D("0.08"))
    assert Quiet() & sweep == sweep


class _Evaluates:
    name = "base"

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[object]:
        return []


class _Declares(_Evaluates):
    acts_below = D("0.05")


class _Overrides(_Declares):
    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[object]:
        return []  # might act anywhere: the inherited promise is about another evaluate


class _Redeclares(_Overrides):
    acts_below = D("0.04")


class _Later(_Declares):
    name = "later"  # same evaluate: the promise still holds


def test_a_promise_counts_only_for_the_evaluate_it_was_made_for() -> None:
    assert declared_quiet(_Declares()) == Quiet(low=D("0.05"))
    assert declared_quiet(_Later()) == Quiet(low=D("0.05"))
    assert declared_quiet(_Overrides()) is None
    assert declared_quiet(_Redeclares()) == Quiet(low=D("0.04"))
    on_instance = _Overrides()
    on_instance.acts_below = D("0.03")  # type: ignore[misc]
    assert declared_quiet(on_instance) == Quiet(low=D("0.03"))
    assert declared_quiet(_Evaluates()) is None


def test_the_built_ins_promise_where_they_never_act() -> None:
    assert declared_quiet(TopUp(trigger="0.04", reach_s=0)) == Quiet(low=D("0.04"))
    # it looks ahead once the mark moves faster than trigger / reach_s over its window
    assert declared_quiet(TopUp(trigger="0.04", reach_s=2)) == Quiet(
        low=D("0.04"), calm=((D("0.02"), D(5)),))
    assert declared_quiet(TopUp(margin_ratio=2)) is None, "the ratio may act at any distance"
    assert declared_quiet(Sweep(safe="0.3")) == Quiet(high=D("0.3"))


def test_bad_quiet_declarations_are_refused() -> None:
    with pytest.raises(PolicyParamError, match="acts_below: must be a Decimal in"):
        declared_quiet(type("Float", (_Evaluates,), {"acts_below": 0.05})())
    with pytest.raises(PolicyParamError, match="must be at most acts_above"):
        declared_quiet(type("Crossed", (_Evaluates,),
                            {"acts_below": D("0.3"), "acts_above": D("0.2")})())
