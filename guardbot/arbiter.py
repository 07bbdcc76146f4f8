"""The arbiter: turns policy intents into at most one action per position, or refusals.

Pure: everything it knows comes in ``ArbiterState`` (built by the daemon, with the day's
spending derived from the audit log so that restarts never reset a budget, design.md). Every
intent gets a ``Decision``, approved or refused with a reason, and the executor audits both.

Rules, in the order they are applied to each position:

1. One action per position per round. Intents are ranked ADD before REDUCE (a top-up
   beats a sweep), then by urgency (lower = more endangered), then larger amount first; the
   first intent of a position is considered and the others are refused.
2. Kill switch: everything is refused.
3. In flight: a position with an action still unresolved gets nothing more (no double
   top-up while the outcome of the last one is unknown).
4. REDUCE floor: a REDUCE that would leave the position closer to liquidation than the
   highest ``add_target`` of the policies on it (``Intent.add_floor`` and
   ``distance_after``, set by the policy runner) is refused: a top-up would add the margin
   straight back. Clipping (rule 6) only shrinks a REDUCE, so checking the asked amount is
   enough.
5. Cooldown (``budgets.cooldown_s``) since the position's last action. An ADD right after
   a REDUCE is exempt: a sweep must never stand in the way of a rescue.
6. Amount. Both kinds are clipped to ``per_action``. An ADD is further clipped to what is
   left of ``per_position_per_day`` and ``per_account_per_day`` and to the free balance
   above ``reserve`` (counting what this same round already approved, most endangered
   first). Every clip is named in the reason. A clipped ADD is rounded down to 0.01
   (never above a cap); an unclipped one is rounded up (never below what the policy
   asked); a REDUCE is rounded down. Below ``min_amount`` the intent is refused, naming
   the limit that left too little.
7. Dry run: approved, but marked ``dry_run`` so the executor audits it and calls nothing.

Approved decisions come first, most endangered first (the executor's queue order); refusals
follow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from guardbot.config import BudgetSettings
from guardbot.domain import ZERO, ActionKind, Intent, PositionKey
from guardbot.risk import DISTANCE_TOLERANCE, round_down, round_up


@dataclass(frozen=True, slots=True)
class LastAction:
    """The guard's last action on a position (from the audit log)."""

    at_ms: int
    kind: ActionKind


@dataclass(frozen=True, slots=True)
class ArbiterState:
    """What the arbiter needs to know besides the intents. Amounts are USDC; "today" is
    whatever day the daemon's budget accounting uses (UTC)."""

    now_ms: int
    # free USDC balance per account id; an account missing here has an unknown balance
    free_balance: Mapping[str, Decimal] = field(default_factory=dict)
    in_flight: frozenset[PositionKey] = frozenset()
    last_action: Mapping[PositionKey, LastAction] = field(default_factory=dict)
    added_today_by_position: Mapping[PositionKey, Decimal] = field(default_factory=dict)
    added_today_by_account: Mapping[str, Decimal] = field(default_factory=dict)
    kill_switch: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The arbiter's word on one intent. ``amount`` is what to send (0 when refused);
    ``reason`` explains a refusal, or any clipping of an approval."""

    intent: Intent
    approved: bool
    amount: Decimal
    reason: str
    dry_run: bool = False

    @property
    def key(self) -> PositionKey:
        return self.intent.key

    @property
    def kind(self) -> ActionKind:
        return self.intent.kind


class Arbiter:
    """Applies ``BudgetSettings`` (and dry-run) to the intents of one round."""

    def __init__(self, budgets: BudgetSettings, *, dry_run: bool = False) -> None:
        self.budgets = budgets
        self.dry_run = dry_run

    def decide(self, intents: Iterable[Intent], state: ArbiterState) -> list[Decision]:
        """One decision per intent: approved ones first, most endangered first."""
        ranked = sorted(intents, key=_rank)
        spent_by_account: dict[str, Decimal] = {}
        decided: set[PositionKey] = set()
        approved: list[Decision] = []
        refused: list[Decision] = []
        for intent in ranked:
            if intent.key in decided:
                refused.append(_refuse(intent, "another intent for this position ranks first"))
                continue
            decided.add(intent.key)
            decision = self._decide_one(intent, state, spent_by_account)
            if decision.approved:
                approved.append(decision)
                if intent.kind is ActionKind.ADD:
                    account = intent.account_id
                    spent_by_account[account] = (
                        spent_by_account.get(account, ZERO) + decision.amount
                    )
            else:
                refused.append(decision)
        return approved + refused

    def _decide_one(
        self, intent: Intent, state: ArbiterState, spent_by_account: Mapping[str, Decimal]
    ) -> Decision:
        budgets = self.budgets
        if state.kill_switch:
            return _refuse(intent, "kill switch engaged: no new actions")
        if intent.key in state.in_flight:
            return _refuse(intent, "an action on this position is still in flight")
        if intent.amount <= 0:
            return _refuse(intent, f"amount {intent.amount} is not positive")
        floor, after = intent.add_floor, intent.distance_after
        if (
            intent.kind is ActionKind.REDUCE
            and floor is not None
            and after is not None
            and after < floor - DISTANCE_TOLERANCE
        ):
            return _refuse(
                intent,
                f"a REDUCE of {intent.amount} would leave distance {after:.4f}, below the "
                f"top-up target {floor}: it would be added straight back",
            )
        last = state.last_action.get(intent.key)
        cooldown_ms = int(budgets.cooldown_s * 1000)
        rescue_after_sweep = (
            last is not None and last.kind is ActionKind.REDUCE and intent.kind is ActionKind.ADD
        )
        if last is not None and not rescue_after_sweep:
            waited_ms = state.now_ms - last.at_ms
            if waited_ms < cooldown_ms:
                return _refuse(
                    intent,
                    f"cooldown: last {last.kind} {waited_ms / 1000:.1f} s ago, "
                    f"cooldown {budgets.cooldown_s:g} s",
                )

        limits = [(budgets.per_action, f"per-action cap {budgets.per_action}")]
        if intent.kind is ActionKind.ADD:
            account = intent.account_id
            position_left = budgets.per_position_per_day - state.added_today_by_position.get(
                intent.key, ZERO
            )
            account_left = (
                budgets.per_account_per_day
                - state.added_today_by_account.get(account, ZERO)
                - spent_by_account.get(account, ZERO)
            )
            limits.append((position_left, f"position daily budget left {position_left}"))
            limits.append((account_left, f"account daily budget left {account_left}"))
            balance = state.free_balance.get(account)
            if balance is None:
                if budgets.reserve > 0:
                    return _refuse(
                        intent, f"free balance unknown: cannot keep the reserve {budgets.reserve}"
                    )
            else:
                spendable = balance - budgets.reserve - spent_by_account.get(account, ZERO)
                limits.append(
                    (spendable, f"free balance above reserve {budgets.reserve} is {spendable}")
                )

        amount = intent.amount
        clips = []
        for limit, description in limits:
            if amount > limit:
                amount = max(limit, ZERO)
                clips.append(description)
        if intent.kind is ActionKind.ADD and not clips:
            rounded = round_up(amount)
            amount = rounded if all(rounded <= limit for limit, _ in limits) else round_down(amount)
        else:
            amount = round_down(amount)
        if amount < budgets.min_amount:
            because = f" ({'; '.join(clips)})" if clips else ""
            return _refuse(
                intent, f"amount {amount} is below the minimum {budgets.min_amount}{because}"
            )
        notes = [f"clipped from {intent.amount} to {amount}: {'; '.join(clips)}"] if clips else []
        if self.dry_run:
            notes.insert(0, "dry run: no call")
        return Decision(
            intent, approved=True, amount=amount, reason="; ".join(notes), dry_run=self.dry_run
        )


def _rank(intent: Intent) -> tuple[bool, Decimal, Decimal]:
    return (intent.kind is not ActionKind.ADD, intent.urgency, -intent.amount)


def _refuse(intent: Intent, reason: str) -> Decision:
    return Decision(intent, approved=False, amount=ZERO, reason=reason)
