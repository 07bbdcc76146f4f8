"""The audit schema: SQLAlchemy 2 typed declarative models.

Alembic owns the schema (``migrations/``); a test checks that autogenerate finds no difference
between these models and the migrated database on SQLite and PostgreSQL.

Money is exact everywhere: ``NUMERIC(38, 18)`` on PostgreSQL and, on SQLite (whose NUMERIC
affinity would store binary floats), the canonical decimal string. Timestamps are
timezone-aware UTC. Rows are only ever inserted: the daemon never UPDATEs or DELETEs
(docs/architecture.md, "Audit log"), and every event carries a per-account hash chain
(``chain.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

# Stable constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MONEY_SCALE = 18
ID_LENGTH = 32


class Money(TypeDecorator[Decimal]):
    """An exact decimal with 18 places: NUMERIC(38, 18), or its string on SQLite."""

    impl = Numeric(38, MONEY_SCALE)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(48))
        return dialect.type_descriptor(Numeric(38, MONEY_SCALE, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return format(value, "f")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp. SQLite keeps it as naive UTC text (which sorts and
    compares correctly); it always comes back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: audit timestamps must be aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    """One row per daemon start."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    version: Mapped[str] = mapped_column(String(64))
    config_hash: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(255))


class RunEnd(Base):
    """The orderly stop of a run (a separate row: runs are never updated)."""

    __tablename__ = "run_ends"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    ended_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Action(Base):
    """One decided action with the snapshot it was based on, the policy and its reason."""

    __tablename__ = "actions"
    __table_args__ = (
        CheckConstraint("kind IN ('ADD', 'REDUCE')", name="kind"),
        CheckConstraint("margin_mode IN ('ISOLATED', 'CROSS')", name="margin_mode"),
        CheckConstraint("source IN ('REST', 'WS', 'MARK')", name="source"),
        # audit list --account A --since T (newest first); the ledger's history load.
        Index(None, "account_id", "time"),
        Index(None, "account_id", "symbol", "time"),
        # audit list / summary without --account.
        Index(None, "time"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    account_id: Mapped[str] = mapped_column(String(66))
    symbol: Mapped[str] = mapped_column(String(64))
    margin_mode: Mapped[str] = mapped_column(String(8))
    policy: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(8))
    amount: Mapped[Decimal] = mapped_column(Money())
    reason: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool]
    mark_price: Mapped[Decimal] = mapped_column(Money())
    margin: Mapped[Decimal] = mapped_column(Money())
    qty: Mapped[Decimal] = mapped_column(Money())
    liquidation_price: Mapped[Decimal | None] = mapped_column(Money())
    distance: Mapped[Decimal | None] = mapped_column(Money())
    data_age_ms: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(8))
    details: Mapped[dict[str, str]] = mapped_column(JSON)


# The kinds that end an exchange call: each one also gets an ``action_outcomes`` row.
OUTCOME_KINDS = ("SUCCEEDED", "REJECTED", "UNCERTAIN", "RECONCILED", "FAILED")
OUTCOME_FILTER = "kind IN (" + ", ".join(f"'{kind}'" for kind in OUTCOME_KINDS) + ")"

EVENT_KINDS = (
    "INTENT",
    "SENT",
    "SUCCEEDED",
    "REJECTED",
    "UNCERTAIN",
    "RECONCILED",
    "VERIFIED",
    "SKIPPED",
    "FAILED",
    "DRY_RUN",
)


class ActionEvent(Base):
    """The append-only lifecycle of an action. ``seq``, ``prev_hash`` and ``hash`` form the
    account's hash chain over its events (the INTENT event also covers its action row)."""

    __tablename__ = "action_events"
    __table_args__ = (
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{kind}'" for kind in EVENT_KINDS) + ")", name="kind"
        ),
        # One writer per account chain: a second one fails here instead of forking it.
        UniqueConstraint("account_id", "seq"),
        Index(None, "action_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    action_id: Mapped[str] = mapped_column(ForeignKey("actions.id"))
    account_id: Mapped[str] = mapped_column(String(66))
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, str] | None] = mapped_column(JSON)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# What the summary reads besides the time and the group keys.
SUMMED = ["latency_ms", "kind", "applied", "dry_run", "action_kind", "amount"]


class ActionOutcome(Base):
    """One row per outcome event (``OUTCOME_KINDS``) with the action fields ``audit summary``
    groups and sums by, written by the writer in the same transaction as the event.

    A copy, so the summary scans one narrow row per outcome instead of joining ten million
    events to their actions; append-only like its event, and ``audit verify`` checks that it
    still agrees with the hash-chained event and action rows. ``applied``: the exchange
    confirmed the change (SUCCEEDED) or reconciliation found it applied (RECONCILED with
    ``applied=true``)."""

    __tablename__ = "action_outcomes"
    __table_args__ = (
        CheckConstraint("action_kind IN ('ADD', 'REDUCE')", name="action_kind"),
        CheckConstraint(OUTCOME_FILTER, name="kind"),
        # --since, and summary by day on PostgreSQL from the index alone, one day at a time.
        Index(None, "action_time", postgresql_include=SUMMED),
    )

    event_id: Mapped[str] = mapped_column(ForeignKey("action_events.id"), primary_key=True)
    action_id: Mapped[str] = mapped_column(ForeignKey("actions.id"))
    action_time: Mapped[datetime] = mapped_column(UtcDateTime())
    account_id: Mapped[str] = mapped_column(String(66))
    symbol: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(128))
    action_kind: Mapped[str] = mapped_column(String(8))
    amount: Mapped[Decimal] = mapped_column(Money())
    dry_run: Mapped[bool]
    kind: Mapped[str] = mapped_column(String(16))
    applied: Mapped[bool]
    latency_ms: Mapped[int | None] = mapped_column(Integer)


def outcome_row(event: Mapping[str, Any], action: Mapping[str, Any]) -> dict[str, Any]:
    """The ``action_outcomes`` row of an outcome ``event`` of ``action`` (column values of
    ``action_events`` and ``actions``): what the writer inserts and ``audit verify`` expects."""
    detail = event["detail"]
    reconciled = event["kind"] == "RECONCILED" and isinstance(detail, dict)
    applied = event["kind"] == "SUCCEEDED" or (reconciled and detail.get("applied") == "true")
    return {
        "event_id": event["id"], "action_id": action["id"], "action_time": action["time"],
        "account_id": action["account_id"], "symbol": action["symbol"],
        "policy": action["policy"], "action_kind": action["kind"], "amount": action["amount"],
        "dry_run": action["dry_run"], "kind": event["kind"], "applied": applied,
        "latency_ms": event["latency_ms"],
    }  # fmt: skip


# What came of an operator's command: it changed something (done), there was nothing to
# change (unchanged), it was answered (answered), it was too old to carry out (stale), or it
# could not be carried out (failed).
COMMAND_RESULTS = ("done", "unchanged", "answered", "stale", "failed")


class Observation(Base):
    """Something the bot saw but did not cause: a liquidation, margin changed by someone
    else, the budget state."""

    __tablename__ = "observations"
    __table_args__ = (Index(None, "account_id", "time"),)

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    account_id: Mapped[str] = mapped_column(String(66))
    symbol: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, str]] = mapped_column(JSON)


class OperatorCommand(Base):
    """A command an operator gave the running daemon (``/pause`` over Telegram...): who,
    which command, and what came of it. ``chat_id`` and ``sender`` name the operator as the
    channel does; ``result`` is one of ``COMMAND_RESULTS``; ``message`` says what was done
    or answered, in words."""

    __tablename__ = "operator_commands"
    __table_args__ = (
        CheckConstraint(
            "result IN (" + ", ".join(f"'{result}'" for result in COMMAND_RESULTS) + ")",
            name="result",
        ),
        Index(None, "time"),
    )

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    channel: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str | None] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(String(64))
    arguments: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, str]] = mapped_column(JSON)


# The same tables for SQLAlchemy Core: the writer's inserts, the reads and the checks.
RUNS = Base.metadata.tables["runs"]
RUN_ENDS = Base.metadata.tables["run_ends"]
ACTIONS = Base.metadata.tables["actions"]
EVENTS = Base.metadata.tables["action_events"]
OUTCOMES = Base.metadata.tables["action_outcomes"]
OBSERVATIONS = Base.metadata.tables["observations"]
COMMANDS = Base.metadata.tables["operator_commands"]
