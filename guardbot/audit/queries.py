"""Reading the audit log: the one Python API behind ``guardbot audit`` and the tests.

Every function takes a SQLAlchemy ``Engine`` (``database.create_audit_engine``) and returns
plain values: rows are dicts of Python values (``Decimal`` money, aware UTC ``datetime``),
formatted by the CLI. An action's ``status`` is the kind of its latest event.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
)

from guardbot.audit import chain
from guardbot.audit.database import money_sum, percentile, utc_day
from guardbot.audit.tables import Base

ACTIONS = Base.metadata.tables["actions"]
EVENTS = Base.metadata.tables["action_events"]
OBSERVATIONS = Base.metadata.tables["observations"]

GroupBy = Literal["account", "symbol", "policy", "day"]
GROUP_BY: tuple[GroupBy, ...] = ("account", "symbol", "policy", "day")
LIST_COLUMNS = (
    "id", "time", "account_id", "symbol", "margin_mode", "policy", "kind", "amount",
    "status", "dry_run", "reason",
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
    (SUCCEEDED) or reconciliation found applied, dry runs excluded. ``failures``: actions
    with a REJECTED or FAILED event; ``uncertain``: actions that had an UNCERTAIN outcome.
    Latency is over events that carry one (the exchange call)."""

    key: str
    actions: int
    added: Decimal
    reduced: Decimal
    failures: int
    uncertain: int
    latency_mean_ms: float | None
    latency_p99_ms: float | None


def _group_key(by: GroupBy) -> ColumnElement[Any]:
    if by == "day":
        return utc_day(ACTIONS.c.time)
    return {"account": ACTIONS.c.account_id, "symbol": ACTIONS.c.symbol,
            "policy": ACTIONS.c.policy}[by]  # fmt: skip


def summarize(engine: Engine, since: datetime | None = None,
              by: GroupBy = "account") -> list[SummaryRow]:  # fmt: skip
    """Counts, margin moved, failures, uncertain outcomes and latency per group."""
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}: use one of {', '.join(GROUP_BY)}")

    def flag(condition: ColumnElement[bool]) -> Any:
        return func.max(case((condition, 1), else_=0))

    applied = or_(
        EVENTS.c.kind == "SUCCEEDED",
        and_(EVENTS.c.kind == "RECONCILED", EVENTS.c.detail["applied"].as_string() == "true"),
    )
    outcomes = select(
        EVENTS.c.action_id,
        flag(applied).label("applied"),
        flag(EVENTS.c.kind.in_(["REJECTED", "FAILED"])).label("failed"),
        flag(EVENTS.c.kind == "UNCERTAIN").label("uncertain"),
    ).group_by(EVENTS.c.action_id)
    if since is not None:
        # An action's events follow it: none predates it.
        outcomes = outcomes.where(EVENTS.c.time >= since)
    ev = outcomes.subquery("outcomes")
    key = _group_key(by).label("key")
    moved = and_(ev.c.applied == 1, ACTIONS.c.dry_run.is_(False))

    def amount_of(kind: str) -> Any:
        return money_sum(case((and_(moved, ACTIONS.c.kind == kind), ACTIONS.c.amount)))

    totals = (
        select(
            key,
            func.count().label("actions"),
            amount_of("ADD").label("added"),
            amount_of("REDUCE").label("reduced"),
            func.coalesce(func.sum(ev.c.failed), 0).label("failures"),
            func.coalesce(func.sum(ev.c.uncertain), 0).label("uncertain"),
        )
        .select_from(ACTIONS.outerjoin(ev, ev.c.action_id == ACTIONS.c.id))
        .group_by(key)
    )
    latency = (
        select(
            key,
            func.avg(EVENTS.c.latency_ms).label("mean"),
            percentile(EVENTS.c.latency_ms, literal(0.99)).label("p99"),
        )
        .select_from(EVENTS.join(ACTIONS, ACTIONS.c.id == EVENTS.c.action_id))
        .where(EVENTS.c.latency_ms.is_not(None))
        .group_by(key)
    )
    if since is not None:
        totals = totals.where(ACTIONS.c.time >= since)
        latency = latency.where(ACTIONS.c.time >= since)
    with engine.connect() as connection:
        latencies = {row.key: row for row in connection.execute(latency)}
        rows = connection.execute(totals.order_by(key)).all()
    summary = []
    for row in rows:
        lat = latencies.get(row.key)
        summary.append(
            SummaryRow(
                key=str(row.key),
                actions=int(row.actions),
                added=row.added or Decimal(0),
                reduced=row.reduced or Decimal(0),
                failures=int(row.failures),
                uncertain=int(row.uncertain),
                latency_mean_ms=None if lat is None or lat.mean is None else float(lat.mean),
                latency_p99_ms=None if lat is None or lat.p99 is None else float(lat.p99),
            )
        )
    return summary


@dataclass(frozen=True, slots=True)
class Break:
    """The first broken link of one account's chain."""

    account_id: str
    seq: int | None
    event_id: str | None
    action_id: str | None
    problem: str

    def __str__(self) -> str:
        where = f"account {self.account_id}"
        if self.seq is not None:
            where += f", event seq {self.seq} (id {self.event_id}, action {self.action_id})"
        elif self.action_id is not None:
            where += f", action {self.action_id}"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class Verification:
    accounts: int = 0
    events: int = 0
    breaks: list[Break] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.breaks


def verify_chains(engine: Engine, account: str | None = None) -> Verification:
    """Recompute every account's hash chain and name the first broken link of each."""
    result = Verification()
    action_columns = [ACTIONS.c[name].label(f"a_{name}") for name in chain.ACTION_FIELDS]
    query = (
        select(EVENTS, *action_columns)
        .select_from(
            EVENTS.outerjoin(
                ACTIONS, and_(ACTIONS.c.id == EVENTS.c.action_id, EVENTS.c.kind == "INTENT")
            )
        )
        .order_by(EVENTS.c.account_id, EVENTS.c.seq)
    )
    orphans = select(ACTIONS.c.account_id, ACTIONS.c.id).where(
        ~exists().where(EVENTS.c.action_id == ACTIONS.c.id, EVENTS.c.kind == "INTENT")
    )
    if account is not None:
        query = query.where(EVENTS.c.account_id == account)
        orphans = orphans.where(ACTIONS.c.account_id == account)
    broken: set[str] = set()
    current: str | None = None
    expected_seq, prev_hash = 1, chain.GENESIS
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=5000).execute(query):
            values = row._mapping
            account_id: str = values["account_id"]
            if account_id != current:
                current = account_id
                result.accounts += 1
                expected_seq, prev_hash = 1, chain.GENESIS
            result.events += 1
            if account_id in broken:
                continue
            problem = _check_link(values, expected_seq, prev_hash)
            if problem is not None:
                broken.add(account_id)
                result.breaks.append(
                    Break(account_id, values["seq"], values["id"], values["action_id"], problem)
                )
            expected_seq, prev_hash = values["seq"] + 1, values["hash"]
        for row in connection.execute(orphans):
            if row.account_id not in broken:
                broken.add(row.account_id)
                result.breaks.append(Break(
                    row.account_id, None, None, row.id,
                    "the action has no INTENT event (deleted?)"))  # fmt: skip
    return result


def _check_link(values: Any, expected_seq: int, prev_hash: str) -> str | None:
    if values["seq"] != expected_seq:
        return f"expected seq {expected_seq}: events missing before this one (deleted?)"
    if values["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous event's hash (rows removed or edited)"
    action = None
    if values["kind"] == "INTENT":
        action = {name: values[f"a_{name}"] for name in chain.ACTION_FIELDS}
        if action["id"] is None:
            return "the INTENT event's action row is missing"
    if chain.event_hash(values, action) != values["hash"]:
        what = "this event or its action row" if action is not None else "this event"
        return f"hash does not match the stored values: {what} was edited"
    return None
