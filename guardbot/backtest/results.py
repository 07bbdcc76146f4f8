"""What a backtest run found, and how it is gathered: the arbiter's decisions (watched as
they are made), the audit log (read back from its database) and the exchange's own ledger
of applied changes, compared to the cent."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import Engine, select

from guardbot.arbiter import Arbiter, ArbiterState, Decision, Refusal
from guardbot.audit.ledger import Status, status_after
from guardbot.audit.tables import Action, ActionEvent, Observation
from guardbot.backtest.oracle import Verdict
from guardbot.domain import ZERO, ActionKind, Intent, PositionKey

LAST_DECISIONS = 8
Number = TypeVar("Number", float, Decimal)


# -- the arbiter, watched -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
    """One decision of the arbiter on one position."""

    time_ms: int
    kind: ActionKind
    amount: Decimal
    approved: bool
    refusal: Refusal | None
    reason: str


class WatchedArbiter(Arbiter):
    """The daemon's arbiter, deciding exactly as it does, with every decision counted:
    refusals by reason (all of them, the routine ones the guard does not audit too) and the
    last few decisions of each position."""

    def __init__(self, arbiter: Arbiter) -> None:
        super().__init__(arbiter.budgets, dry_run=arbiter.dry_run)
        self.refusals: Counter[Refusal] = Counter()
        self.refusals_by_position: dict[PositionKey, Counter[Refusal]] = {}
        self.last: dict[PositionKey, deque[Note]] = {}

    def decide(self, intents: Iterable[Intent], state: ArbiterState) -> list[Decision]:
        decisions = super().decide(intents, state)
        for decision in decisions:
            key = decision.key
            if decision.refusal is not None:
                self.refusals[decision.refusal] += 1
                self.refusals_by_position.setdefault(key, Counter())[decision.refusal] += 1
            notes = self.last.setdefault(key, deque(maxlen=LAST_DECISIONS))
            notes.append(Note(state.now_ms, decision.kind,
                              decision.amount if decision.approved else decision.intent.amount,
                              decision.approved, decision.refusal,
                              decision.reason or decision.intent.reason))  # fmt: skip
        return decisions


# -- the audit log, read back -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditedAction:
    action_id: str
    time_ms: int
    account_id: str
    symbol: str
    kind: ActionKind
    amount: Decimal
    status: Status
    last_event: str
    reason: str


def observation_counts(engine: Engine) -> Counter[str]:
    """How many observations of each kind the run recorded (liquidations, closes, margin
    moved by someone else: the backtest has no one else)."""
    with engine.connect() as connection:
        return Counter(kind for (kind,) in connection.execute(select(Observation.kind)))


def audited_actions(engine: Engine) -> list[AuditedAction]:
    """Every action in the audit database with what its events say became of it."""
    from guardbot.audit import chain

    query = (
        select(Action.id, Action.time, Action.account_id, Action.symbol, Action.kind,
               Action.amount, Action.reason, ActionEvent.kind.label("event"),
               ActionEvent.detail, ActionEvent.message)
        .join(ActionEvent, ActionEvent.action_id == Action.id)
        .where(Action.dry_run.is_(False))
        .order_by(ActionEvent.seq)
    )  # fmt: skip
    found: dict[str, AuditedAction] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            known = found.get(row.id)
            status = status_after(known.status if known else Status.UNKNOWN, row.event,
                                  row.detail)
            reason = row.message if row.event == "SKIPPED" and row.message else row.reason
            found[row.id] = AuditedAction(
                row.id, chain.to_ms(row.time), row.account_id, row.symbol,
                ActionKind(row.kind), row.amount, status, row.event,
                known.reason if known and row.event != "SKIPPED" else reason)  # fmt: skip
    return sorted(found.values(), key=lambda a: a.time_ms)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """The exchange's applied changes against the actions the audit log says were applied,
    per (account, symbol, kind): counts and USDC; ``unsettled`` actions have no known
    outcome at the end (they may have moved money)."""

    exchange: Mapping[tuple[str, str, ActionKind], tuple[int, Decimal]]
    audit: Mapping[tuple[str, str, ActionKind], tuple[int, Decimal]]
    unsettled: int

    @property
    def equal(self) -> bool:
        return dict(self.exchange) == dict(self.audit) and self.unsettled == 0

    def total(self, side: str, kind: ActionKind) -> Decimal:
        book = self.exchange if side == "exchange" else self.audit
        return sum((v[1] for k, v in book.items() if k[2] is kind), ZERO)


def compare(applied: Iterable[tuple[str, str, ActionKind, Decimal]],
            actions: Sequence[AuditedAction]) -> LedgerCheck:  # fmt: skip
    def tally(items: Iterable[tuple[str, str, ActionKind, Decimal]]
              ) -> dict[tuple[str, str, ActionKind], tuple[int, Decimal]]:  # fmt: skip
        totals: dict[tuple[str, str, ActionKind], tuple[int, Decimal]] = {}
        for account, symbol, kind, amount in items:
            count, total = totals.get((account, symbol, kind), (0, ZERO))
            totals[(account, symbol, kind)] = (count + 1, total + amount)
        return totals

    recorded = [(a.account_id, a.symbol, a.kind, a.amount) for a in actions
                if a.status is Status.APPLIED]  # fmt: skip
    unsettled = sum(1 for a in actions if a.status is Status.UNKNOWN)
    return LedgerCheck(tally(applied), tally(recorded), unsettled)


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """A moment of a position, for its chart."""

    time_ms: int
    mark: Decimal
    margin: Decimal  # 0 once it is gone


@dataclass(slots=True)
class PositionResult:
    account: str
    symbol: str
    side: str
    leverage: int
    qty: Decimal
    cost: Decimal  # cost_position: qty * entry
    start_margin: Decimal
    verdict: Verdict
    guarded_liquidated_ms: int | None = None
    unguarded_liquidated_ms: int | None = None
    added: Decimal = ZERO
    swept: Decimal = ZERO
    peak_extra: Decimal = ZERO
    final_extra: Decimal = ZERO
    actions: Counter[str] = field(default_factory=Counter)  # "ADD applied", ...
    refusals: Counter[Refusal] = field(default_factory=Counter)
    last_decisions: list[Note] = field(default_factory=list)
    history: list[AuditedAction] = field(default_factory=list)
    # what the exchange applied to it: (time, kind, amount), in its order
    applied: list[tuple[int, ActionKind, Decimal]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def lost_savable(self) -> bool:
        return self.verdict.savable and self.guarded_liquidated_ms is not None

    @property
    def ratio(self) -> float | None:
        """Peak extra margin committed over the oracle's, for a saved position that needed
        margin."""
        if self.guarded_liquidated_ms is not None or self.verdict.extra <= 0:
            return None
        return float(self.peak_extra / self.verdict.extra)

    @property
    def excess(self) -> Decimal | None:
        """Peak extra margin beyond the oracle's, in USDC, for a saved position that needed
        margin (the positions ``ratio`` covers). Where the oracle needs a few USDC the
        ratio is large whatever the policy does; this says what the guard tied up beyond
        need in money."""
        if self.ratio is None:
            return None
        return self.peak_extra - self.verdict.extra


@dataclass(slots=True)
class ScenarioResult:
    path: str
    speed: float
    duration_s: float
    positions: list[PositionResult]
    refusals: Counter[Refusal]
    ledger: LedgerCheck
    venue: Counter[str]
    start_ms: int = 0  # virtual time the path starts at
    steepest: float = 0.0  # the path's fastest adverse move, fraction per second
    wall_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    observations: Counter[str] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return self.path if self.speed == 1 else f"{self.path} x{self.speed:g}"


def ratios(results: Iterable[ScenarioResult]) -> list[float]:
    return [r for s in results for p in s.positions if (r := p.ratio) is not None]


def excesses(results: Iterable[ScenarioResult]) -> list[Decimal]:
    return [e for s in results for p in s.positions if (e := p.excess) is not None]


def median_and_worst(values: Sequence[Number]) -> tuple[Number | None, Number | None]:
    if not values:
        return None, None
    return statistics.median(values), max(values)
