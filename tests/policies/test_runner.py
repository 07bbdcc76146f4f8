"""Runner: every applicable policy runs; a raising or misbehaving one is isolated and
reported; evaluations are counted."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from prometheus_client import REGISTRY

from guardbot.domain import ActionKind, Intent
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.runner import evaluate_policies
from guardbot.policies.topup import TopUp

from .conftest import ViewMaker

CTX = PolicyContext(now_ms=1_000)


class Raises:
    name = "raises"

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        raise ZeroDivisionError("divided by zero")


class Returns:
    """Returns whatever it was given, to test what the runner lets through."""

    name = "returns"

    def __init__(self, result: object) -> None:
        self.result = result

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        return self.result  # type: ignore[return-value]


class EchoParams:
    name = "echo"

    def evaluate(self, view: PositionView, ctx: PolicyContext) -> list[Intent]:
        return [view.intent(ActionKind.ADD, D(ctx.params["amount"]), self.name, "echo")]


def count(policy: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "guardbot_policy_evaluations_total", {"policy": policy, "outcome": outcome}
    )
    return value or 0.0


def test_a_raising_policy_is_isolated(make_view: ViewMaker) -> None:
    view = make_view(margin=D(60))  # topup wants 85
    before = count("bad-plugin", "error"), count("topup-r", "intent")
    result = evaluate_policies(
        [LoadedPolicy("bad-plugin", Raises()), LoadedPolicy("topup-r", TopUp(target="0.10"))],
        view, CTX,
    )
    [intent] = result.intents
    assert (intent.policy, intent.amount) == ("topup-r", D(85))
    [failure] = result.failures
    assert failure.policy == "bad-plugin"
    assert failure.error == "ZeroDivisionError: divided by zero"
    assert (failure.account_id, failure.symbol) == (view.position.account_id, "PERP_ALT_USDC")
    assert count("bad-plugin", "error") == before[0] + 1
    assert count("topup-r", "intent") == before[1] + 1


def test_nothing_to_do_is_counted(make_view: ViewMaker) -> None:
    before = count("quiet", "none")
    result = evaluate_policies([LoadedPolicy("quiet", TopUp())], make_view(), CTX)
    assert result.intents == () and result.failures == ()
    assert count("quiet", "none") == before + 1


GOOD = Intent("0x" + "ab" * 32, "PERP_ALT_USDC", ActionKind.ADD, D(5), "x", "y")


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (None, "InvalidIntent: evaluate must return a list of Intent, got NoneType"),
        (["add 5"], "InvalidIntent: expected an Intent, got str"),
        ([replace(GOOD, amount=D(-5))], "amount must be a positive Decimal, got Decimal('-5')"),
        ([replace(GOOD, amount=D("NaN"))], "amount must be a positive Decimal, got Decimal('NaN')"),
        ([replace(GOOD, amount=5.0)],  # type: ignore[arg-type]
         "amount must be a positive Decimal, got 5.0"),
        ([replace(GOOD, account_id="0xelse")], "returned while evaluating"),
        ([replace(GOOD, kind="ADD")],  # type: ignore[arg-type]
         "kind must be an ActionKind"),
        ([replace(GOOD, urgency=D("Infinity"))], "urgency must be a finite Decimal"),
        # the view's removable maximum is 100 (margin 200 - notional 1000 * IMR 0.1)
        (
            [replace(GOOD, kind=ActionKind.REDUCE, amount=D("100.01"))],
            "REDUCE 100.01 exceeds the removable maximum 100",
        ),
    ],
)
def test_misbehaving_output_is_a_failure(make_view: ViewMaker, result: object, error: str) -> None:
    outcome = evaluate_policies([LoadedPolicy("odd", Returns(result))], make_view(), CTX)
    assert outcome.intents == ()
    [failure] = outcome.failures
    assert failure.policy == "odd"
    assert error in failure.error


def test_a_good_intent_passes(make_view: ViewMaker) -> None:
    reduce = replace(GOOD, kind=ActionKind.REDUCE, amount=D(100))
    view = make_view()
    outcome = evaluate_policies([LoadedPolicy("ok", Returns((GOOD, reduce)))], view, CTX)
    after = view.distance_with_margin(D(100))
    assert outcome.intents == (
        replace(GOOD, policy="ok"), replace(reduce, policy="ok", distance_after=after)
    )


def test_a_reduce_carries_the_distance_it_leaves_and_the_highest_applicable_add_target(
    make_view: ViewMaker,
) -> None:
    view = make_view()  # distance 0.158; reducing 100 of its 200 margin leaves 0.0526
    spoofed = replace(GOOD, kind=ActionKind.REDUCE, amount=D(100), add_floor=D(0),
                      distance_after=D(1))
    policies = [
        LoadedPolicy("sweeper", Returns([spoofed])),
        LoadedPolicy("topup", TopUp(), add_target=D("0.10")),
        LoadedPolicy("far", TopUp(trigger="0.06", target="0.2"), add_target=D("0.2")),
        LoadedPolicy("elsewhere", TopUp(trigger="0.1", target="0.3"), add_target=D("0.3"),
                     symbols=("PERP_BTC_USDC",)),
    ]
    [reduce] = evaluate_policies(policies, view, CTX).intents
    assert reduce.add_floor == D("0.2")
    assert reduce.distance_after == view.distance_with_margin(D(100))
    assert D("0.0526") < reduce.distance_after < D("0.0527")  # type: ignore[operator]


def test_scope_and_params(make_view: ViewMaker) -> None:
    view = make_view()
    policies = [
        LoadedPolicy("eth-only", TopUp(trigger="0.9", target="0.95"), symbols=("PERP_ETH_USDC",)),
        LoadedPolicy("main-only", EchoParams(), accounts=("main",), params={"amount": "4"}),
        LoadedPolicy("everyone", EchoParams(), params={"amount": "6"}),
    ]
    result = evaluate_policies(policies, view, CTX, account_name="main")
    assert [(i.policy, i.amount) for i in result.intents] == [
        ("main-only", D(4)),
        ("everyone", D(6)),
    ]
    result = evaluate_policies(policies, view, CTX, account_name="other")
    assert [i.policy for i in result.intents] == ["everyone"]
