"""Reading the audit log: the one Python API behind ``guardbot audit`` and the tests.

Every function takes a SQLAlchemy ``Engine`` (``database.create_audit_engine``) and returns
plain values: rows are dicts of Python values (``Decimal`` money, aware UTC ``datetime``),
formatted by the CLI. An action's ``status`` is the kind of its latest event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Engine,
    Select,
    Table,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    text,
    true,
)

from guardbot.audit import chain
from guardbot.audit.database import money_sum, utc_day
from guardbot.audit.records import SETTLED, ActionRecord, EventKind, UnfinishedAction
from guardbot.audit.tables import ACTIONS, COMMANDS, EVENTS, OBSERVATIONS, OUTCOMES
from guardbot.domain import ActionKind, MarginMode, Source

GroupBy = Literal["account", "symbol", "policy", "day"]
GROUP_BY: tuple[GroupBy, ...] = ("account", "symbol", "policy", "day")
LIST_COLUMNS = (
    "id", "time", "account_id", "symbol", "margin_mode", "policy", "kind", "amount",
    "status", "dry_run", "reason",
)  # fmt: skip
COMMAND_COLUMNS = (
    "time", "channel", "chat_id", "sender", "command", "arguments", "result", "message",
)  # fmt: skip
SNAPSHOT_COLUMNS = (
    "run_id", "mark_price", "margin", "qty", "liquidation_price", "distance", "data_age_ms",
    "source", "details",
)  # fmt: skip


class NotFound(LookupError):
    """No such action: check the id (``guardbot audit list`` shows them)."""


@dataclass(frozen=True, slots=True)
class ActionFilter:
    """``audit list`` / ``audit export`` filters; ``None`` means any."""

    account: str | None = None
    symbol: str | None = None
    policy: str | None = None
    kind: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _status() -> Any:
    return (
        select(EVENTS.c.kind)
        .where(EVENTS.c.action_id == ACTIONS.c.id)
        .order_by(EVENTS.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )


def _filtered(where: ActionFilter, status: Any) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    for name in ("account", "symbol", "policy", "kind"):
        value = getattr(where, name)
        if value is not None:
            column = ACTIONS.c.account_id if name == "account" else ACTIONS.c[name]
            conditions.append(column == value)
    if where.status is not None:
        conditions.append(status == where.status)
    if where.since is not None:
        conditions.append(ACTIONS.c.time >= where.since)
    if where.until is not None:
        conditions.append(ACTIONS.c.time < where.until)
    return select(ACTIONS, status.label("status")).where(*conditions)


def list_actions(engine: Engine, where: ActionFilter, limit: int = 100) -> list[dict[str, Any]]:
    """Actions matching ``where``, newest first, at most ``limit``."""
    query = (
        _filtered(where, _status())
        .order_by(ACTIONS.c.time.desc(), ACTIONS.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [{name: row._mapping[name] for name in LIST_COLUMNS}
                for row in connection.execute(query)]  # fmt: skip


def export_actions(engine: Engine, where: ActionFilter) -> Iterator[dict[str, Any]]:
    """Every matching action with its snapshot and status, oldest first, streamed."""
    query = _filtered(where, _status()).order_by(ACTIONS.c.time, ACTIONS.c.id)
    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=2000).execute(query)
        for row in rows:
            yield {name: row._mapping[name] for name in (*LIST_COLUMNS, *SNAPSHOT_COLUMNS)}


@dataclass(frozen=True, slots=True)
class ActionDetail:
    action: dict[str, Any]
    events: list[dict[str, Any]]


def show_action(engine: Engine, action_id: str) -> ActionDetail:
    """One action with its snapshot and every event, in order. Raises ``NotFound``."""
    with engine.connect() as connection:
        row = connection.execute(
            select(ACTIONS, _status().label("status")).where(ACTIONS.c.id == action_id)
        ).first()
        if row is None:
            raise NotFound(f"no action with id {action_id!r}")
        events = connection.execute(
            select(EVENTS).where(EVENTS.c.action_id == action_id).order_by(EVENTS.c.seq)
        )
        return ActionDetail(dict(row._mapping), [dict(event._mapping) for event in events])


def _in_span(engine: Engine, table: Table, since: datetime | None, until: datetime | None,
             *where: ColumnElement[bool]) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of ``table`` timed in the span (``until`` exclusive), oldest first."""
    query = select(table).where(*where).order_by(table.c.time, table.c.id)
    if since is not None:
        query = query.where(table.c.time >= since)
    if until is not None:
        query = query.where(table.c.time < until)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def list_commands(engine: Engine, since: datetime | None = None,
                  until: datetime | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Operators' commands (``operator_commands``) in the span, oldest first."""
    return _in_span(engine, COMMANDS, since, until)


def list_observations(engine: Engine, since: datetime | None = None,
                      until: datetime | None = None,
                      kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Observations in the span (of ``kinds``, if given), oldest first."""
    where = [] if kinds is None else [OBSERVATIONS.c.kind.in_(list(kinds))]
    return _in_span(engine, OBSERVATIONS, since, until, *where)


def applied_actions(engine: Engine, since: datetime | None = None,
                    until: datetime | None = None) -> set[str]:  # fmt: skip
    """Ids of the actions decided in the span whose change the exchange confirmed or
    reconciliation found applied (``action_outcomes.applied``)."""
    query = select(OUTCOMES.c.action_id).where(OUTCOMES.c.applied).distinct()
    if since is not None:
        query = query.where(OUTCOMES.c.action_time >= since)
    if until is not None:
        query = query.where(OUTCOMES.c.action_time < until)
    with engine.connect() as connection:
        return set(connection.execute(query).scalars())


def account_known(engine: Engine, account: str) -> bool:
    """Whether anything was ever recorded for ``account``."""
    query = select(
        or_(
            exists().where(ACTIONS.c.account_id == account),
            exists().where(OBSERVATIONS.c.account_id == account),
        )
    )
    with engine.connect() as connection:
        return bool(connection.execute(query).scalar())


def action_ids(engine: Engine, prefix: str, limit: int = 2) -> list[str]:
    """Action ids starting with ``prefix`` (so ``audit show`` accepts a unique prefix)."""
    query = select(ACTIONS.c.id).where(ACTIONS.c.id.startswith(prefix, autoescape=True))
    with engine.connect() as connection:
        return list(connection.execute(query.limit(limit)).scalars())


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One group of ``audit summary``. ``added``/``reduced``: margin the exchange confirmed
    (SUCCEEDED) or reconciliation found applied (RECONCILED with ``applied=true``), dry runs
    excluded. ``failures``: REJECTED and FAILED outcomes; ``uncertain``: UNCERTAIN ones.
    Latency (continuous percentile) is over the outcome events that carry one.
    ``dry_run_added``/``dry_run_reduced``: what dry runs would have moved (their actions
    that reached the point of sending, a DRY_RUN event), never counted in the two above."""

    key: str
    actions: int
    added: Decimal
    reduced: Decimal
    failures: int
    uncertain: int
    latency_mean_ms: float | None
    latency_p99_ms: float | None
    dry_run_added: Decimal = Decimal(0)
    dry_run_reduced: Decimal = Decimal(0)


def _outcome_totals() -> list[ColumnElement[Any]]:
    moved = and_(OUTCOMES.c.applied, OUTCOMES.c.dry_run.is_(False))

    def moved_by(kind: str) -> ColumnElement[Any]:
        return money_sum(case((and_(moved, OUTCOMES.c.action_kind == kind), OUTCOMES.c.amount)))

    return [
        func.count().label("events"),
        moved_by("ADD").label("added"),
        moved_by("REDUCE").label("reduced"),
        func.count(case((OUTCOMES.c.kind.in_(["REJECTED", "FAILED"]), 1))).label("failures"),
        func.count(case((OUTCOMES.c.kind == "UNCERTAIN", 1))).label("uncertain"),
    ]


def _grouped(by: GroupBy, since: datetime | None,
             until: datetime | None) -> tuple[Select[Any], Select[Any]]:  # fmt: skip
    """(key, actions) and (key, latency, outcome totals), each grouped in one pass."""
    action_key, outcome_key = _key(by, ACTIONS, "time"), _key(by, OUTCOMES, "action_time")
    counts = select(action_key, func.count()).group_by(action_key)
    outcomes = select(outcome_key, OUTCOMES.c.latency_ms, *_outcome_totals()).group_by(
        outcome_key, OUTCOMES.c.latency_ms
    )
    if since is not None:
        counts = counts.where(ACTIONS.c.time >= since)
        outcomes = outcomes.where(OUTCOMES.c.action_time >= since)
    if until is not None:
        counts = counts.where(ACTIONS.c.time < until)
        outcomes = outcomes.where(OUTCOMES.c.action_time < until)
    return counts, outcomes


def _key(by: GroupBy, table: Table, time: str) -> ColumnElement[Any]:
    if by == "day":
        return utc_day(table.c[time]).label("key")
    return table.c[{"account": "account_id", "symbol": "symbol", "policy": "policy"}[by]]


def _dry_run_totals(by: GroupBy, since: datetime | None,
                    until: datetime | None) -> Select[Any]:  # fmt: skip
    """(key, added, reduced) by the dry-run actions that reached the point of sending."""
    key = _key(by, ACTIONS, "time")
    would_send = exists().where(EVENTS.c.action_id == ACTIONS.c.id, EVENTS.c.kind == "DRY_RUN")

    def moved_by(kind: str) -> ColumnElement[Any]:
        return money_sum(case((ACTIONS.c.kind == kind, ACTIONS.c.amount)))

    query = (select(key, moved_by("ADD"), moved_by("REDUCE"))
             .where(ACTIONS.c.dry_run.is_(True), would_send).group_by(key))
    if since is not None:
        query = query.where(ACTIONS.c.time >= since)
    if until is not None:
        query = query.where(ACTIONS.c.time < until)
    return query


_DAY = timedelta(days=1)  # a UTC day is exactly 24 hours (PostgreSQL ignores leap seconds)


def _by_day_ranges(since: datetime | None,
                   until: datetime | None) -> tuple[Select[Any], Select[Any]]:  # fmt: skip
    """The same two results by UTC day on PostgreSQL, one range scan of the time indexes
    per day (index-only for outcomes): no per-row day computation and a small aggregate per
    day instead of one large hash over every row (about 1.5x faster on 10 million events)."""
    span = select(func.min(ACTIONS.c.time).label("first"), func.max(ACTIONS.c.time).label("last"))
    if since is not None:
        span = span.where(ACTIONS.c.time >= since)
    if until is not None:
        span = span.where(ACTIONS.c.time < until)
    bounds = span.subquery("span")
    start = func.date_trunc("day", bounds.c.first, "UTC")
    day = func.generate_series(start, bounds.c.last, _DAY, type_=DateTime(timezone=True))
    days = select(day.label("day")).select_from(bounds).cte("days")

    def that_day(column: Any) -> list[ColumnElement[bool]]:
        within = [column >= days.c.day, column < days.c.day + _DAY]
        if since is not None:
            within.append(column >= since)
        if until is not None:
            within.append(column < until)
        return within

    key = utc_day(days.c.day).label("key")
    count = select(func.count()).where(*that_day(ACTIONS.c.time)).scalar_subquery()
    counts = select(key, count)
    histogram = (
        select(OUTCOMES.c.latency_ms, *_outcome_totals())
        .where(*that_day(OUTCOMES.c.action_time))
        .group_by(OUTCOMES.c.latency_ms)
        .lateral("histogram")
    )
    outcomes = select(key, *histogram.c).select_from(days.join(histogram, true()))
    return counts, outcomes


def summarize(engine: Engine, since: datetime | None = None,
              by: GroupBy = "account", until: datetime | None = None) -> list[SummaryRow]:
    """Counts, margin moved, failures, uncertain outcomes and latency per group.

    Actions are counted from ``actions``; everything else comes from ``action_outcomes``
    alone (one row per outcome event, no join), grouped by (key, latency): the latency
    histogram gives exact mean and p99 in Python without an ordered-set aggregate. ``since``
    and ``until`` (exclusive) select actions decided in that span, with all their outcomes."""
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUP_BY)}")
    groups: dict[Any, _Group] = {}
    with engine.connect() as connection:
        postgresql = connection.dialect.name == "postgresql"
        if postgresql:
            # The (key, latency) aggregate would otherwise spill to disk at 4 MB.
            connection.execute(text("SET LOCAL work_mem = '64MB'"))
        counts, outcomes = (
            _by_day_ranges(since, until) if postgresql and by == "day"
            else _grouped(by, since, until)
        )
        for key, actions in connection.execute(counts).all():
            if actions:
                groups[key] = _Group(actions=actions)
        histogram = connection.execute(outcomes).all()  # one fetch: 87,000 rows by day
        for key, latency_ms, events, added, reduced, failures, uncertain in histogram:
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group()
            if added is not None:
                group.added += added
            if reduced is not None:
                group.reduced += reduced
            group.failures += failures
            group.uncertain += uncertain
            if latency_ms is not None:
                group.latencies.append((latency_ms, events))
        for key, added, reduced in connection.execute(_dry_run_totals(by, since, until)):
            group = groups.setdefault(key, _Group())
            group.dry_run_added += added or 0
            group.dry_run_reduced += reduced or 0
    rows = [group.row(str(key)) for key, group in groups.items()]
    return sorted(rows, key=lambda row: row.key)


@dataclass(slots=True)
class _Group:
    actions: int = 0
    added: Decimal = Decimal(0)
    reduced: Decimal = Decimal(0)
    failures: int = 0
    uncertain: int = 0
    latencies: list[tuple[int, int]] = field(default_factory=list)  # (ms, how many)
    dry_run_added: Decimal = Decimal(0)
    dry_run_reduced: Decimal = Decimal(0)

    def row(self, key: str) -> SummaryRow:
        total = sum(count for _, count in self.latencies)
        mean = sum(ms * count for ms, count in self.latencies) / total if total else None
        return SummaryRow(key, self.actions, self.added, self.reduced, self.failures,
                          self.uncertain, mean, percentile(self.latencies, 0.99),
                          self.dry_run_added, self.dry_run_reduced)  # fmt: skip


def percentile(histogram: list[tuple[int, int]], fraction: float) -> float | None:
    """``percentile_cont`` over a histogram of (value, count): linear interpolation between
    the two closest ranks."""
    total = sum(count for _, count in histogram)
    if not total:
        return None
    position = fraction * (total - 1)
    low_rank, weight = int(position), position - int(position)
    values: list[int] = []
    seen = 0
    for value, count in sorted(histogram):
        seen += count
        while len(values) < 2 and seen > low_rank + len(values):
            values.append(value)
        if len(values) == 2:
            break
    low = values[0]
    high = values[1] if len(values) > 1 else low
    return low + (high - low) * weight


def unfinished_actions(engine: Engine, accounts: list[str]) -> list[UnfinishedAction]:
    """Actions of these accounts with no settled outcome, oldest first, with the kind of
    their latest event (the start-up reconcile's input: ``AuditLog.unfinished_actions``)."""
    settled = exists().where(
        EVENTS.c.action_id == ACTIONS.c.id,
        EVENTS.c.kind.in_([kind.value for kind in SETTLED]),
    )
    last_event = (
        select(EVENTS.c.kind)
        .where(EVENTS.c.action_id == ACTIONS.c.id)
        .order_by(EVENTS.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(ACTIONS, last_event.label("last_event"))
        .where(ACTIONS.c.account_id.in_(accounts), ~settled)
        .order_by(ACTIONS.c.time, ACTIONS.c.id)
    )
    with engine.connect() as connection:
        return [
            UnfinishedAction(
                action_id=row.id,
                time_ms=chain.to_ms(row.time),
                last_event=EventKind(row.last_event),
                record=ActionRecord(
                    run_id=row.run_id, account_id=row.account_id, symbol=row.symbol,
                    margin_mode=MarginMode(row.margin_mode), policy=row.policy,
                    kind=ActionKind(row.kind), amount=row.amount, reason=row.reason,
                    dry_run=row.dry_run, mark_price=row.mark_price, margin=row.margin,
                    qty=row.qty, liquidation_price=row.liquidation_price,
                    distance=row.distance, data_age_ms=row.data_age_ms,
                    source=Source(row.source), details=row.details,
                ),
            )
            for row in connection.execute(query)
        ]  # fmt: skip
