"""Arbiter: one action per position, top-up before sweep, budgets, cooldowns, minimum,
reserve, kill switch, dry run, urgency order."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardbot.arbiter import Arbiter, ArbiterState, Decision, LastAction, Refusal
from guardbot.config import BudgetSettings
from guardbot.domain import ActionKind, Intent, MarginMode
from guardbot.settlement import MAX_UNCERTAIN

A = "0x" + "aa" * 32
B = "0x" + "bb" * 32
ADD, REDUCE = ActionKind.ADD, ActionKind.REDUCE
BUDGETS = BudgetSettings(
    per_action=D(1000),
    per_position_per_day=D(3000),
    per_account_per_day=D(5000),
    cooldown_s=30,
    min_amount=D(1),
    reserve=D(100),
)
NOW = 1_000_000


def intent(
    kind: ActionKind = ADD,
    amount: str = "50",
    symbol: str = "PERP_ETH_USDC",
    account: str = A,
    urgency: str = "0.03",
    policy: str = "topup",
) -> Intent:
    return Intent(account, symbol, kind, D(amount), policy, "test", urgency=D(urgency))


def key(symbol: str = "PERP_ETH_USDC", account: str = A) -> tuple[str, str, MarginMode]:
    return (account, symbol, MarginMode.ISOLATED)


def state(**changes: Any) -> ArbiterState:
    base = ArbiterState(now_ms=NOW, free_balance={A: D(10_000), B: D(10_000)})
    return replace(base, **changes)


def decide(*intents: Intent, budgets: BudgetSettings = BUDGETS, **changes: Any) -> list[Decision]:
    return Arbiter(budgets).decide(intents, state(**changes))


def only(decisions: list[Decision]) -> Decision:
    [decision] = decisions
    return decision


@pytest.mark.parametrize(
    ("the_intent", "changes", "amount", "reason"),
    [
        # plain approval
        (intent(amount="50"), {}, D(50), ""),
        # unclipped ADD rounds up to the cent, REDUCE down
        (intent(amount="50.001"), {}, D("50.01"), ""),
        (intent(REDUCE, amount="50.009"), {}, D("50.00"), ""),
        # per-action cap applies to both kinds
        (intent(amount="1500"), {}, D(1000), "clipped from 1500 to 1000.00: per-action cap 1000"),
        (intent(REDUCE, amount="1500"), {}, D(1000), "per-action cap 1000"),
        # per-position daily budget
        (
            intent(amount="800"),
            {"added_today_by_position": {key(): D(2500)}},
            D(500),
            "clipped from 800 to 500.00: position daily budget left 500",
        ),
        # per-account daily budget (spent on other positions)
        (
            intent(amount="800"),
            {"added_today_by_account": {A: D("4699.999")}},
            D("300.00"),
            "account daily budget left 300.001",
        ),
        # free balance above the reserve
        (
            intent(amount="800"),
            {"free_balance": {A: D(600)}},
            D(500),
            "free balance above reserve 100 is 500",
        ),
        # budgets do not limit a REDUCE (it returns money)
        (intent(REDUCE, amount="800"), {"added_today_by_account": {A: D(5000)}}, D(800), ""),
        (intent(REDUCE, amount="800"), {"free_balance": {}}, D(800), ""),
        # cooldown does not stop a rescue right after a sweep
        (intent(amount="50"), {"last_action": {key(): LastAction(NOW - 1, REDUCE)}}, D(50), ""),
        # cooldown over
        (intent(amount="50"), {"last_action": {key(): LastAction(NOW - 30_000, ADD)}}, D(50), ""),
        # another position's cooldown is not this one's
        (intent(amount="50"), {"last_action": {key("X"): LastAction(NOW, ADD)}}, D(50), ""),
    ],
)
def test_approvals(the_intent: Intent, changes: dict[str, Any], amount: D, reason: str) -> None:
    decision = only(decide(the_intent, **changes))
    assert decision.approved, decision.reason
    assert decision.amount == amount
    assert reason in decision.reason
    assert not decision.dry_run


def test_an_unclipped_add_is_never_rounded_up_past_a_cap() -> None:
    budgets = BUDGETS.model_copy(update={"per_action": D("999.999")})
    decision = only(decide(intent(amount="999.995"), budgets=budgets))
    assert decision.approved and decision.amount == D("999.99")


@pytest.mark.parametrize(
    ("the_intent", "changes", "reason"),
    [
        (intent(), {"kill_switch": True}, "kill switch engaged: no new actions"),
        (intent(REDUCE), {"kill_switch": True}, "kill switch engaged"),
        (intent(), {"blocked": frozenset({key()})}, "an action on this position is queued"),
        (
            intent(),
            {"last_action": {key(): LastAction(NOW - 12_000, ADD)}},
            "cooldown: last ADD 12.0 s ago, cooldown 30 s",
        ),
        (
            intent(REDUCE),
            {"last_action": {key(): LastAction(NOW - 1_000, ADD)}},
            "cooldown: last ADD 1.0 s ago",
        ),
        (
            intent(REDUCE),
            {"last_action": {key(): LastAction(NOW - 1_000, REDUCE)}},
            "cooldown: last REDUCE",
        ),
        (intent(amount="0.5"), {}, "amount 0.50 is below the minimum 1"),
        (
            intent(amount="50"),
            {"added_today_by_position": {key(): D(3000)}},
            "amount 0.00 is below the minimum 1 (position daily budget left 0)",
        ),
        (
            intent(amount="50"),
            {"added_today_by_account": {A: D(5200)}},
            "amount 0.00 is below the minimum 1 (account daily budget left -200)",
        ),
        (
            intent(amount="50"),
            {"free_balance": {A: D("100.5")}},
            "amount 0.50 is below the minimum 1 (free balance above reserve 100 is 0.5)",
        ),
        (intent(), {"free_balance": {}}, "free balance unknown: cannot keep the reserve 100"),
        (intent(amount="0"), {}, "amount 0 is not positive"),
    ],
)
def test_refusals(the_intent: Intent, changes: dict[str, Any], reason: str) -> None:
    decision = only(decide(the_intent, **changes))
    assert not decision.approved
    assert decision.amount == 0
    assert decision.reason.startswith(reason), decision.reason
    assert decision.refusal is not None


def rescue(amount: str = "50", **changes: Any) -> Intent:
    return replace(intent(amount=amount, **changes), rescue=True)


@pytest.mark.parametrize("last", [LastAction(NOW - 1, ADD), LastAction(NOW - 1, REDUCE)])
def test_a_cooldown_never_refuses_a_rescue(last: LastAction) -> None:
    """Below its trigger a position gets its top-up however recent the last action was:
    only the budgets and the free balance limit it."""
    decision = only(decide(rescue(), last_action={key(): last}))
    assert decision.approved, decision.reason


def test_a_rescue_is_still_bound_by_the_budgets_and_the_balance() -> None:
    spent = only(decide(rescue(), last_action={key(): LastAction(NOW - 1, ADD)},
                        added_today_by_position={key(): D(3000)}))
    assert (spent.approved, spent.refusal) == (False, Refusal.BUDGET)
    poor = only(decide(rescue(), free_balance={A: D("100.5")}))
    assert (poor.approved, poor.refusal) == (False, Refusal.BALANCE)


def test_unsettled_calls_let_only_a_rescue_through() -> None:
    """An earlier call's answer was lost (or no snapshot shows it yet): a rescue may still
    go out, counting that call as spent; anything else waits for it to settle."""
    unsettled = {key(): 1}
    assert only(decide(rescue(), unsettled=unsettled)).approved
    for other in (intent(), intent(REDUCE, urgency="1.5", policy="sweep")):
        decision = only(decide(other, unsettled=unsettled))
        assert (decision.approved, decision.refusal) == (False, Refusal.UNSETTLED)
        assert decision.refusal.routine
    many = only(decide(rescue(), unsettled={key(): MAX_UNCERTAIN},
                       uncertain={key(): MAX_UNCERTAIN}))
    assert (many.approved, many.refusal) == (False, Refusal.TOO_MANY_UNCERTAIN)
    assert not many.refusal.routine, "that many lost answers in a row is news"


def test_a_rescue_is_refused_while_the_position_is_blocked() -> None:
    decision = only(decide(rescue(), blocked=frozenset({key()})))
    assert (decision.approved, decision.refusal) == (False, Refusal.BLOCKED)


def test_a_hold_back_refuses_only_the_kind_the_exchange_refused() -> None:
    """A sweep refused with -1101 (the price moved against the position) holds back sweeps,
    never the rescue that follows; a refused ADD holds back ADDs."""
    swept = {key(): frozenset({REDUCE})}
    assert only(decide(rescue(), held=swept)).approved
    again = only(decide(intent(REDUCE, urgency="1.5", policy="sweep"), held=swept))
    assert (again.approved, again.refusal) == (False, Refusal.BLOCKED)
    topped = only(decide(rescue(), held={key(): frozenset({ADD})}))
    assert (topped.approved, topped.refusal) == (False, Refusal.BLOCKED)


def test_a_rescue_outranks_a_larger_add_a_cooldown_may_refuse() -> None:
    """A plugin's ADD above its own trigger is no rescue: ranked first (it is larger) it was
    refused by the cooldown, and the rescue with it as outranked."""
    other = replace(intent(amount="80"), policy="plugin")
    decisions = decide(rescue("50"), other, last_action={key(): LastAction(NOW - 1, ADD)})
    approved = [d for d in decisions if d.approved]
    assert [(d.intent.policy, d.amount) for d in approved] == [("topup", D(50))]


def test_routine_refusals_are_pacing_the_rest_are_news() -> None:
    assert {r for r in Refusal if r.routine} == {
        Refusal.OUTRANKED, Refusal.BLOCKED, Refusal.UNSETTLED, Refusal.COOLDOWN}


def test_unknown_balance_without_a_reserve_is_left_to_the_exchange() -> None:
    budgets = BUDGETS.model_copy(update={"reserve": D(0)})
    assert only(decide(intent(), budgets=budgets, free_balance={})).approved


def test_one_action_per_position_and_topup_beats_sweep() -> None:
    sweep = intent(REDUCE, amount="200", urgency="1.5", policy="sweep")
    small = intent(amount="20", urgency="0.03", policy="vol_target")
    big = intent(amount="60", urgency="0.03", policy="topup")
    decisions = decide(sweep, small, big)
    assert [(d.intent.policy, d.approved) for d in decisions] == [
        ("topup", True),  # same urgency: the larger top-up
        ("vol_target", False),
        ("sweep", False),
    ]
    assert decisions[1].reason == "another intent for this position ranks first"


def test_a_refused_topup_still_blocks_the_sweep() -> None:
    sweep = intent(REDUCE, amount="200", urgency="1.5", policy="sweep")
    decisions = decide(sweep, intent(amount="50"), blocked=frozenset({key()}))
    assert [d.approved for d in decisions] == [False, False]


def test_most_endangered_first_and_budget_goes_to_them() -> None:
    calm = intent(amount="900", symbol="PERP_BTC_USDC", urgency="0.04")
    dire = intent(amount="900", symbol="PERP_ETH_USDC", urgency="-0.01")
    mid = intent(amount="900", symbol="PERP_SOL_USDC", urgency="0.02")
    sweep = intent(REDUCE, amount="900", symbol="PERP_XRP_USDC", urgency="1.2")
    other = intent(amount="900", symbol="PERP_ETH_USDC", account=B, urgency="0.03")
    # account A has 2000 left today: dire gets 900, mid 900, calm the last 200
    decisions = decide(
        calm, sweep, other, dire, mid, added_today_by_account={A: D(3000)}
    )
    assert [(d.intent.account_id, d.intent.symbol, d.amount) for d in decisions] == [
        (A, "PERP_ETH_USDC", D(900)),
        (A, "PERP_SOL_USDC", D(900)),
        (B, "PERP_ETH_USDC", D(900)),
        (A, "PERP_BTC_USDC", D(200)),
        (A, "PERP_XRP_USDC", D(900)),
    ]
    assert all(d.approved for d in decisions)
    assert "account daily budget left 200" in decisions[3].reason


def test_the_free_balance_is_shared_within_a_round() -> None:
    first = intent(amount="400", symbol="PERP_ETH_USDC", urgency="0.01")
    second = intent(amount="400", symbol="PERP_BTC_USDC", urgency="0.02")
    decisions = decide(first, second, free_balance={A: D(700)})
    assert [d.amount for d in decisions] == [D(400), D(200)]


def test_dry_run_approves_but_marks() -> None:
    arbiter = Arbiter(BUDGETS, dry_run=True)
    decision = only(arbiter.decide([intent(amount="1500")], state()))
    assert decision.approved and decision.dry_run
    assert decision.amount == D(1000)
    assert decision.reason.startswith("dry run: no call; clipped from 1500 to 1000.00")
    refused = only(arbiter.decide([intent()], state(kill_switch=True)))
    assert not refused.approved and not refused.dry_run


def test_decision_exposes_the_position() -> None:
    decision = only(decide(intent(REDUCE)))
    assert (decision.key, decision.kind) == (key(), REDUCE)


intents_st = st.lists(
    st.builds(
        intent,
        kind=st.sampled_from([ADD, REDUCE]),
        amount=st.decimals(min_value="0.01", max_value=5000, places=2).map(str),
        symbol=st.sampled_from(["S1", "S2", "S3", "S4"]),
        account=st.sampled_from([A, B]),
        urgency=st.decimals(min_value=-1, max_value=2, places=3).map(str),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    intents_st,
    st.decimals(min_value=0, max_value=6000, places=2),
    st.decimals(min_value=0, max_value=20_000, places=2),
)
def test_budgets_always_hold(intents: list[Intent], spent: D, balance: D) -> None:
    decisions = decide(
        *intents,
        added_today_by_account={A: spent},
        free_balance={A: balance, B: balance},
    )
    assert len(decisions) == len(intents)
    approved = [d for d in decisions if d.approved]
    keys = [d.key for d in approved]
    assert len(keys) == len(set(keys))  # one action per position
    for account in (A, B):
        added = sum((d.amount for d in approved if d.kind is ADD and d.key[0] == account), D(0))
        already = spent if account == A else D(0)
        assert added + already <= max(BUDGETS.per_account_per_day, already)
        assert added <= max(balance - BUDGETS.reserve, D(0))
    for d in approved:
        assert BUDGETS.min_amount <= d.amount <= BUDGETS.per_action
    # approved first, ADD before REDUCE, most endangered first
    ranks = [(d.kind is not ADD, d.intent.urgency) for d in approved]
    assert ranks == sorted(ranks)
    assert all(d.approved for d in decisions[: len(approved)])


@pytest.mark.parametrize(
    ("floor", "after", "approved"),
    [
        (D("0.10"), D("0.05"), False),  # into the top-up's band: it would be added back
        (D("0.10"), D("0.10") - D("1e-13"), True),  # exactly at the floor, solver precision
        (D("0.10"), D("0.25"), True),
        (D("0.10"), None, True),  # no liquidation price left at all
        (None, D("0.05"), True),  # no ADD policy on this position
    ],
)
def test_a_reduce_never_lands_below_the_add_floor(
    floor: D | None, after: D | None, approved: bool
) -> None:
    reduce = replace(intent(REDUCE, policy="sweep"), add_floor=floor, distance_after=after)
    decision = only(decide(reduce))
    assert decision.approved is approved
    if not approved:
        assert decision.reason == (
            "a REDUCE of 50 would leave distance 0.0500, below the top-up target 0.10: it "
            "would be added straight back"
        )
