"""The arbiter: turns policy intents into at most one action per position, or refusals.

Pure: everything it knows comes in ``ArbiterState`` (built by the guard from the budget
ledger, which is derived from the audit log so that restarts never reset a budget). Every
intent gets a ``Decision``, approved or refused with a ``Refusal`` and a reason.

Rules, in the order they are applied to each position:

1. One action per position per round. Intents are ranked ADD before REDUCE (a top-up
   beats a sweep), a rescue ADD before any other ADD (a plugin's ADD that a cooldown may
   refuse must not outrank the rescue that no cooldown refuses), then by urgency (lower =
   more endangered), then larger amount first; the first intent of a position is
   considered and the others are refused.
2. Kill switch: everything is refused.
3. Blocked: a position with an action queued or on the wire gets nothing more; one held
   back after a rejection gets nothing more of the kind refused (a refused sweep never holds
   back a rescue). A position whose earlier calls are not settled yet (their
   answer was lost, or no snapshot shows them yet) gets only a *rescue* ADD (one a policy
   marks ``rescue``: the position is below its trigger), and no call at all while
   ``MAX_UNCERTAIN`` of them have an unknown outcome (refused and reported: that many lost
   answers in a row is news). The unsettled ADDs already count as spent in the budgets, so the
   worst a lost answer costs is extra margin inside the budget, never a rescue
   (docs/architecture.md, "Rescues").
4. REDUCE floor: a REDUCE that would leave the position closer to liquidation than the
   highest ``add_target`` of the policies on it (``Intent.add_floor`` and
   ``distance_after``, set by the policy runner) is refused: a top-up would add the margin
   straight back. Clipping (rule 6) only shrinks a REDUCE, so checking the asked amount is
   enough.
5. Cooldown (``budgets.cooldown_s``) since the position's last action. It damps flapping,
   sweeps and repeated actions above the trigger; it never refuses a rescue ADD, and an ADD
   right after a REDUCE is exempt too (a sweep must never stand in the way of a top-up).
   Below the trigger only the budgets and the free balance limit an ADD.
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

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from guardbot.config import BudgetSettings
from guardbot.domain import ZERO, ActionKind, Intent, PositionKey
from guardbot.risk import DISTANCE_TOLERANCE, round_down, round_up
from guardbot.settlement import MAX_UNCERTAIN


class Refusal(enum.StrEnum):
    """Why an intent was refused. ``routine`` ones are the normal pacing of the guard (not
    audited, not alerted); the others are news."""

    OUTRANKED = "outranked"  # another intent for the position ranks first
    KILL_SWITCH = "kill_switch"
    BLOCKED = "blocked"  # queued, on the wire, or held back after a rejection
    UNSETTLED = "unsettled"  # earlier calls unsettled, and this is no rescue
    TOO_MANY_UNCERTAIN = "too_many_uncertain"  # even a rescue waits: answers keep getting lost
    NOT_POSITIVE = "not_positive"
    REDUCE_FLOOR = "reduce_floor"
    COOLDOWN = "cooldown"
    BALANCE_UNKNOWN = "balance_unknown"
    BUDGET = "budget"  # a daily budget left less than the minimum
    BALANCE = "balance"  # the free balance above the reserve left less than the minimum
    BELOW_MINIMUM = "below_minimum"

    @property
    def routine(self) -> bool:
        return self in _ROUTINE


_ROUTINE = frozenset({Refusal.OUTRANKED, Refusal.BLOCKED, Refusal.UNSETTLED, Refusal.COOLDOWN})


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
    # queued or on the wire: nothing more for these
    blocked: frozenset[PositionKey] = frozenset()
    # held back after a rejection: nothing more of these kinds
    held: Mapping[PositionKey, frozenset[ActionKind]] = field(default_factory=dict)
    # how many calls on each position are not settled yet, and how many of those have an
    # unknown outcome
    unsettled: Mapping[PositionKey, int] = field(default_factory=dict)
    uncertain: Mapping[PositionKey, int] = field(default_factory=dict)
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
    refusal: Refusal | None = None

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
            key = intent.key
            if key in decided:
                refused.append(_refuse(intent, Refusal.OUTRANKED,
                                       "another intent for this position ranks first"))
                continue
            decided.add(key)
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
        key = intent.key
        rescue = intent.rescue and intent.kind is ActionKind.ADD
        if state.kill_switch:
            return _refuse(intent, Refusal.KILL_SWITCH, "kill switch engaged: no new actions")
        if key in state.blocked:
            return _refuse(intent, Refusal.BLOCKED,
                           "an action on this position is queued or on the wire")
        if intent.kind in state.held.get(key, ()):
            return _refuse(intent, Refusal.BLOCKED,
                           f"{intent.kind} on this position held back after a rejection")
        unsettled = state.unsettled.get(key, 0)
        if unsettled and not rescue:
            return _refuse(intent, Refusal.UNSETTLED,
                           f"{unsettled} earlier call(s) on this position not settled yet")
        uncertain = state.uncertain.get(key, 0)
        if uncertain >= MAX_UNCERTAIN:
            return _refuse(intent, Refusal.TOO_MANY_UNCERTAIN,
                           f"{uncertain} earlier calls on this position have an unknown "
                           "outcome: no more until some are settled")
        if intent.amount <= 0:
            return _refuse(intent, Refusal.NOT_POSITIVE, f"amount {intent.amount} is not positive")
        floor, after = intent.add_floor, intent.distance_after
        if (
            intent.kind is ActionKind.REDUCE
            and floor is not None
            and after is not None
            and after < floor - DISTANCE_TOLERANCE
        ):
            return _refuse(
                intent,
                Refusal.REDUCE_FLOOR,
                f"a REDUCE of {intent.amount} would leave distance {after:.4f}, below the "
                f"top-up target {floor}: it would be added straight back",
            )
        last = state.last_action.get(key)
        cooldown_ms = int(budgets.cooldown_s * 1000)
        add_after_sweep = (
            last is not None and last.kind is ActionKind.REDUCE and intent.kind is ActionKind.ADD
        )
        if last is not None and not rescue and not add_after_sweep:
            waited_ms = state.now_ms - last.at_ms
            if waited_ms < cooldown_ms:
                return _refuse(
                    intent,
                    Refusal.COOLDOWN,
                    f"cooldown: last {last.kind} {waited_ms / 1000:.1f} s ago, "
                    f"cooldown {budgets.cooldown_s:g} s",
                )

        # (limit, how to name it: a template and its values, formatted only when it clips,
        # the refusal it stands for when it leaves too little)
        limits: list[tuple[Decimal, str, tuple[Decimal, ...], Refusal | None]] = [
            (budgets.per_action, "per-action cap {}", (budgets.per_action,), None)
        ]
        if intent.kind is ActionKind.ADD:
            account = intent.account_id
            position_left = budgets.per_position_per_day - state.added_today_by_position.get(
                key, ZERO
            )
            account_left = (
                budgets.per_account_per_day
                - state.added_today_by_account.get(account, ZERO)
                - spent_by_account.get(account, ZERO)
            )
            limits.append((position_left, "position daily budget left {}", (position_left,),
                           Refusal.BUDGET))
            limits.append((account_left, "account daily budget left {}", (account_left,),
                           Refusal.BUDGET))
            balance = state.free_balance.get(account)
            if balance is None:
                if budgets.reserve > 0:
                    return _refuse(
                        intent, Refusal.BALANCE_UNKNOWN,
                        f"free balance unknown: cannot keep the reserve {budgets.reserve}"
                    )
            else:
                spendable = balance - budgets.reserve - spent_by_account.get(account, ZERO)
                limits.append((spendable, "free balance above reserve {} is {}",
                               (budgets.reserve, spendable), Refusal.BALANCE))

        amount = intent.amount
        clips = []
        binding = Refusal.BELOW_MINIMUM
        for limit, template, values, refusal in limits:
            if amount > limit:
                amount = max(limit, ZERO)
                clips.append(template.format(*values))
                binding = refusal or binding
        if intent.kind is ActionKind.ADD and not clips:
            rounded = round_up(amount)
            amount = rounded if all(rounded <= limit[0] for limit in limits) else round_down(amount)
        else:
            amount = round_down(amount)
        if amount < budgets.min_amount:
            because = f" ({'; '.join(clips)})" if clips else ""
            return _refuse(
                intent, binding,
                f"amount {amount} is below the minimum {budgets.min_amount}{because}"
            )
        notes = [f"clipped from {intent.amount} to {amount}: {'; '.join(clips)}"] if clips else []
        if self.dry_run:
            notes.insert(0, "dry run: no call")
        return Decision(
            intent, approved=True, amount=amount, reason="; ".join(notes), dry_run=self.dry_run
        )


def _rank(intent: Intent) -> tuple[bool, bool, Decimal, Decimal]:
    return (intent.kind is not ActionKind.ADD, not intent.rescue, intent.urgency,
            -intent.amount)


def _refuse(intent: Intent, refusal: Refusal, reason: str) -> Decision:
    return Decision(intent, approved=False, amount=ZERO, reason=reason, refusal=refusal)
