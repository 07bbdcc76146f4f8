"""``AuditLog``: the daemon's durable, append-only record of every decision and call.

Every ``record_*`` call returns once its record is fsync'd to the local spool (group
commit, in a worker thread: the event loop never blocks). A single background writer then
copies spooled records, in order and in batches, into the database; while the database is
unreachable it retries with backoff and records simply wait in the spool. Replay is
idempotent (ids are generated here, not by the database), so a record spooled twice or
replayed after a crash is inserted once. The writer also extends each account's hash chain
(``chain.py``) in the same transaction as the insert.

Every record also goes to the budget ledger (``self.ledger``, ``guardbot.audit.ledger``)
before it is durable, so budgets never wait on the database and already count records still
in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, exists, insert, select
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from guardbot import metrics
from guardbot.audit import chain
from guardbot.audit.database import create_audit_engine
from guardbot.audit.errors import (
    AuditError,
    AuditUnavailable,
    MigrationsNotFound,
    NotRecorded,
    SchemaOutOfDate,
)
from guardbot.audit.ledger import Ledger, SqlHistory
from guardbot.audit.schema import check_schema
from guardbot.audit.spool import SEGMENT_BYTES, Spool, SpoolInUse
from guardbot.audit.tables import MONEY_SCALE, OUTCOME_KINDS, Base, outcome_row
from guardbot.backoff import backoff
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.domain import ActionKind, MarginMode, Source

__all__ = [
    "ActionRecord",
    "AuditError",
    "AuditLog",
    "AuditUnavailable",
    "EventKind",
    "MigrationsNotFound",
    "NotRecorded",
    "SchemaOutOfDate",
    "SpoolInUse",
    "UnfinishedAction",
]

log = logging.getLogger(__name__)

# Back-off cap while the database is down. One connection attempt every few seconds costs
# the database nothing, and it bounds how long after its return the spool is replayed (the
# budgets and /readyz follow the replay).
MAX_RETRY_S = 5.0
_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
_ACTIONS = Base.metadata.tables["actions"]
_EVENTS = Base.metadata.tables["action_events"]
_OUTCOMES = Base.metadata.tables["action_outcomes"]
_OBSERVATIONS = Base.metadata.tables["observations"]
_RUNS = Base.metadata.tables["runs"]
_RUN_ENDS = Base.metadata.tables["run_ends"]


class EventKind(enum.StrEnum):
    """The lifecycle of an action. INTENT is written by ``record_action``."""

    INTENT = "INTENT"
    SENT = "SENT"
    SUCCEEDED = "SUCCEEDED"
    REJECTED = "REJECTED"  # the exchange refused: code + message
    UNCERTAIN = "UNCERTAIN"  # may have been applied: must be reconciled
    RECONCILED = "RECONCILED"
    VERIFIED = "VERIFIED"
    SKIPPED = "SKIPPED"  # the arbiter's reason in ``message``
    FAILED = "FAILED"
    DRY_RUN = "DRY_RUN"


# An ADD with one of these never moved money: it leaves the budget.
NOT_APPLIED = frozenset(
    {EventKind.REJECTED, EventKind.SKIPPED, EventKind.FAILED, EventKind.DRY_RUN}
)
# The outcome is known: nothing left to reconcile at start-up.
SETTLED = frozenset(
    {
        EventKind.SUCCEEDED,
        EventKind.REJECTED,
        EventKind.RECONCILED,
        EventKind.VERIFIED,
        EventKind.SKIPPED,
        EventKind.FAILED,
        EventKind.DRY_RUN,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionRecord:
    """A decided action and the snapshot it was based on.

    Money and snapshot figures are stored with 18 decimal places: ``amount`` must fit
    exactly (``ValueError`` otherwise); derived figures (``distance``...) are rounded.
    ``run_id`` defaults to the run started by ``AuditLog.start_run``.
    """

    account_id: str
    symbol: str
    margin_mode: MarginMode
    policy: str
    kind: ActionKind
    amount: Decimal
    reason: str
    dry_run: bool
    mark_price: Decimal
    margin: Decimal
    qty: Decimal
    liquidation_price: Decimal | None = None
    distance: Decimal | None = None
    data_age_ms: int
    source: Source
    run_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UnfinishedAction:
    """An action with no settled outcome (intent, sent or uncertain): reconcile it."""

    action_id: str
    time_ms: int
    last_event: EventKind
    record: ActionRecord


@dataclass(slots=True)
class _Pending:
    record: dict[str, Any]
    segment: int


def _new_id(now_ms: int) -> str:
    # Time-ordered (keeps the primary-key index append-mostly) and unique without the database.
    return f"{now_ms:012x}{os.urandom(10).hex()}"


def _money(name: str, value: Decimal, exact: bool) -> str:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
    rounded = value.quantize(_QUANTUM)
    if exact and rounded != value:
        raise ValueError(f"{name} {value} has more than {MONEY_SCALE} decimal places")
    if rounded.adjusted() >= 38 - MONEY_SCALE:
        raise ValueError(f"{name} {value} is too large to record")
    return chain.decimal_text(rounded)


def _strings(name: str, mapping: Mapping[str, str] | None) -> dict[str, str] | None:
    if mapping is None:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ValueError(f"{name} must map str to str")
    return dict(mapping)


class AuditLog:
    """The audit log of one daemon. Build it with ``await AuditLog.open(...)``."""

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        clock: Clock,
        batch_size: int,
        retry_s: float,
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._clock = clock
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._run_ids: set[str] = set()
        self._run_id: str | None = None
        # record_* -> flusher (fsync) -> _pending -> writer (database).
        self._incoming: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._pending: deque[_Pending] = deque()
        self._flush_wakeup = asyncio.Event()
        self._write_wakeup = asyncio.Event()
        # flush() cuts a retry back-off short; new records do not (no hammering an outage).
        self._retry_now = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._heads: dict[str, tuple[int, str]] = {}
        self.ledger = Ledger(SqlHistory(engine))
        self._db_down_since: float | None = None
        self._last_database_error: str | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        spool_dir: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        batch_size: int = 1000,
        retry_s: float = 1.0,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> AuditLog:
        """Check the schema, take the spool, replay what a previous process left in it, and
        start the background writer.

        Raises ``SchemaOutOfDate`` (run ``guardbot db upgrade``), ``AuditUnavailable`` (the
        database cannot be reached to check it) or ``SpoolInUse``. ``retry_s`` is the first
        back-off after a failed database write; ``segment_bytes`` the spool file size.
        """
        engine = create_audit_engine(url)
        try:
            await asyncio.to_thread(check_schema, engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise AuditUnavailable(f"cannot reach the audit database: {_first_line(exc)}") from None
        except AuditError:
            engine.dispose()
            raise
        spool = await asyncio.to_thread(Spool, spool_dir, segment_bytes)
        audit = cls(engine, spool, clock, batch_size, retry_s)
        await audit._replay_spool()
        audit._flusher = asyncio.create_task(audit._flush_forever(), name="audit-spool")
        audit._writer = asyncio.create_task(audit._write_forever(), name="audit-writer")
        return audit

    async def _replay_spool(self) -> None:
        def read() -> list[_Pending]:
            return [
                _Pending(record, number)
                for number in self._spool.segments()
                for record in self._spool.read(number)
            ]

        replayed = await asyncio.to_thread(read)
        if replayed:
            log.warning("audit: replaying %d records left in the spool", len(replayed))
        for pending in replayed:
            self.ledger.note(pending.record)
            if pending.record["t"] == "run":
                self._run_ids.add(pending.record["id"])
        self._pending.extend(replayed)
        self._update_depth()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for queries and tests)."""
        return self._engine

    @property
    def spool_depth(self) -> int:
        """Records waiting for the database (in the spool, not yet committed)."""
        return len(self._pending) + len(self._incoming)

    @property
    def database_ok(self) -> bool:
        """Whether the writer's latest database write succeeded (``True`` from ``open``, which
        reached the database). While it is ``False`` records wait in the spool. Only writes
        update it: an idle log notices an outage with its next record."""
        return self._db_down_since is None

    @property
    def last_database_error(self) -> str | None:
        """The first line of the latest failed database write's error (no SQL, no
        parameters), kept after the database returns for diagnosis; ``None`` if no write
        has failed since ``open``."""
        return self._last_database_error

    @property
    def run_id(self) -> str | None:
        """The run started by ``start_run``."""
        return self._run_id

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record so far is in the database. Raises ``AuditUnavailable``
        after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._incoming or self._pending:
                    self._drained.clear()
                    self._flush_wakeup.set()
                    self._write_wakeup.set()
                    self._retry_now.set()
                    await self._drained.wait()
        except TimeoutError:
            raise AuditUnavailable(
                f"{self.spool_depth} audit records are still waiting for the database"
            ) from None

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Refuse new records, write out what is pending (for at most ``timeout_s``; the
        rest stays in the spool for the next start) and release everything."""
        if self._closing:
            return
        self._closing = True
        try:
            await self.flush(timeout_s)
        except AuditUnavailable as exc:
            log.warning("audit: closing with records left in the spool: %s", exc)
        # The flusher is never cancelled mid-write: it stops once everything is spooled.
        self._flush_wakeup.set()
        if self._flusher is not None:
            await self._flusher
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        drained = not self._pending and not self._incoming
        await asyncio.to_thread(self._spool.close, drained)
        self._engine.dispose()

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- recording -----------------------------------------------------------------------

    async def start_run(self, version: str, config_hash: str, host: str) -> str:
        """Record a daemon start; returns the run id actions default to."""
        now = self._clock.now_ms()
        run_id = _new_id(now)
        record = {
            "t": "run",
            "id": run_id,
            "time_ms": now,
            "version": version,
            "config_hash": config_hash,
            "host": host,
        }
        await self._submit(record)
        self._run_ids.add(run_id)
        self._run_id = run_id
        return run_id

    async def end_run(self) -> None:
        """Record the orderly stop of the current run."""
        if self._run_id is None:
            raise AuditError("end_run without start_run")
        await self._submit({"t": "run_end", "id": self._run_id, "time_ms": self._clock.now_ms()})
        self._run_id = None

    async def record_action(self, action: ActionRecord) -> str:
        """Record a decided action and its INTENT event; returns the action id once durable.

        Raises ``ValueError`` for a record that cannot be stored faithfully and
        ``NotRecorded`` if the spool cannot be written (then do not perform the action).
        """
        run_id = action.run_id or self._run_id
        if run_id is None or run_id not in self._run_ids:
            raise ValueError(f"unknown run_id {run_id!r}: call start_run first")
        now = self._clock.now_ms()
        action_id = _new_id(now)
        record = {
            "t": "action",
            "id": action_id,
            "event_id": _new_id(now),
            "run_id": run_id,
            "time_ms": now,
            "account_id": action.account_id,
            "symbol": action.symbol,
            "margin_mode": MarginMode(action.margin_mode).value,
            "policy": action.policy,
            "kind": ActionKind(action.kind).value,
            "amount": _money("amount", action.amount, exact=True),
            "reason": action.reason,
            "dry_run": bool(action.dry_run),
            "mark_price": _money("mark_price", action.mark_price, exact=False),
            "margin": _money("margin", action.margin, exact=False),
            "qty": _money("qty", action.qty, exact=False),
            "liquidation_price": None
            if action.liquidation_price is None
            else _money("liquidation_price", action.liquidation_price, exact=False),
            "distance": None
            if action.distance is None
            else _money("distance", action.distance, exact=False),
            "data_age_ms": int(action.data_age_ms),
            "source": Source(action.source).value,
            "details": _strings("details", action.details),
        }
        await self._submit(record)
        return action_id

    async def record_event(
        self,
        action_id: str,
        account_id: str,
        kind: EventKind,
        *,
        code: int | None = None,
        message: str | None = None,
        detail: Mapping[str, str] | None = None,
        latency_ms: int | None = None,
    ) -> None:
        """Append a lifecycle event to an action (durable on return)."""
        kind = EventKind(kind)
        if kind is EventKind.INTENT:
            raise ValueError("INTENT is written by record_action")
        now = self._clock.now_ms()
        await self._submit({
            "t": "event", "id": _new_id(now), "action_id": action_id,
            "account_id": account_id, "time_ms": now, "kind": kind.value,
            "code": None if code is None else int(code), "message": message,
            "detail": _strings("detail", detail),
            "latency_ms": None if latency_ms is None else int(latency_ms),
        })  # fmt: skip

    async def record_observation(
        self, account_id: str, symbol: str | None, kind: str, detail: Mapping[str, str]
    ) -> None:
        """Record something the bot saw but did not cause (liquidation, margin changed by
        someone else, budget state)."""
        now = self._clock.now_ms()
        await self._submit({
            "t": "observation", "id": _new_id(now), "time_ms": now, "account_id": account_id,
            "symbol": symbol, "kind": kind, "detail": _strings("detail", detail) or {},
        })  # fmt: skip

    async def _submit(self, record: dict[str, Any]) -> None:
        if self._closing:
            raise AuditError("the audit log is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Noted before it is durable: budgets count in-flight actions (conservative).
        undo = self.ledger.note(record)
        self._incoming.append((record, future))
        self._flush_wakeup.set()
        try:
            await future
        except NotRecorded:
            if undo is not None:
                undo()
            raise

    # -- start-up reconcile --------------------------------------------------------------

    async def unfinished_actions(
        self, account_ids: Iterable[str], timeout_s: float | None = 30.0
    ) -> list[UnfinishedAction]:
        """Actions of these accounts with no settled outcome (only INTENT, SENT or
        UNCERTAIN), oldest first: after a crash they must be reconciled before anything
        else. Waits until the spool is written out (``AuditUnavailable`` after
        ``timeout_s``) and reloads the accounts' budget ledger, so call it whenever this
        daemon starts guarding an account."""
        accounts = list(dict.fromkeys(account_ids))
        await self.flush(timeout_s)
        try:
            found = await asyncio.to_thread(self._load_unfinished, accounts)
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"cannot read unfinished actions: {_first_line(exc)}") from None
        for account in accounts:
            await self.ledger.load(account, self._clock.now_ms(), again=True)
        return found

    def _load_unfinished(self, accounts: list[str]) -> list[UnfinishedAction]:
        settled = exists().where(
            _EVENTS.c.action_id == _ACTIONS.c.id,
            _EVENTS.c.kind.in_([kind.value for kind in SETTLED]),
        )
        last_event = (
            select(_EVENTS.c.kind)
            .where(_EVENTS.c.action_id == _ACTIONS.c.id)
            .order_by(_EVENTS.c.seq.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = (
            select(_ACTIONS, last_event.label("last_event"))
            .where(_ACTIONS.c.account_id.in_(accounts), ~settled)
            .order_by(_ACTIONS.c.time, _ACTIONS.c.id)
        )
        with self._engine.connect() as connection:
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

    # -- spool (fsync) -------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while not (self._closing and not self._incoming):
            await self._flush_wakeup.wait()
            self._flush_wakeup.clear()
            while self._incoming:
                batch, self._incoming = self._incoming, []
                try:
                    segment = await asyncio.to_thread(
                        self._spool.append, [record for record, _ in batch]
                    )
                except OSError as exc:
                    log.error("audit: cannot write the spool: %s", exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(
                                NotRecorded(
                                    f"the audit spool cannot be written: {exc.strerror or exc}"
                                )
                            )
                    continue
                self._pending.extend(_Pending(record, segment) for record, _ in batch)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                self._update_depth()
                self._write_wakeup.set()

    # -- database writer -----------------------------------------------------------------

    async def _write_forever(self) -> None:
        delays = backoff(self._retry_s, MAX_RETRY_S)
        while True:
            if not self._pending:
                if not self._incoming:
                    self._drained.set()
                await self._write_wakeup.wait()
                self._write_wakeup.clear()
                continue
            batch = [self._pending[i] for i in range(min(self._batch_size, len(self._pending)))]
            self._retry_now.clear()
            try:
                await asyncio.to_thread(self._insert, batch)
            except Exception as exc:  # any failure: keep the records, retry
                self._heads.clear()
                self._report_down(exc)
                await self._retry_after(next(delays))
                continue
            delays = backoff(self._retry_s, MAX_RETRY_S)
            if self._db_down_since is not None:
                log.warning(
                    "audit: database back after %.1f s; spool replayed",
                    self._clock.monotonic() - self._db_down_since,
                )
                self._db_down_since = None
            for _ in batch:
                self._pending.popleft()
            self._update_depth()
            await self._release_segments()

    async def _retry_after(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next write attempt, or less if ``flush`` asks."""
        waits = [asyncio.ensure_future(self._clock.sleep(delay_s)),
                 asyncio.ensure_future(self._retry_now.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _release_segments(self) -> None:
        # Segments older than the oldest uncommitted record are fully in the database. The
        # active one is only ever emptied by close().
        active = self._spool.active
        limit = self._pending[0].segment if self._pending else active
        for number in self._spool.segments():
            if number < limit and number != active:
                await asyncio.to_thread(self._spool.release, number)

    def _report_down(self, exc: Exception) -> None:
        self._last_database_error = _first_line(exc)
        if self._db_down_since is None:
            self._db_down_since = self._clock.monotonic()
            log.warning("audit: database unavailable, spooling locally: %s", _first_line(exc))
        else:
            log.debug("audit: database still unavailable: %s", _first_line(exc))

    def _update_depth(self) -> None:
        metrics.SPOOL_DEPTH.set(self.spool_depth)

    def _insert(self, batch: list[_Pending]) -> None:
        """Insert a batch in one transaction; on a constraint error, one record at a time,
        setting aside (logged, kept in ``quarantine.jsonl``) those the database refuses."""
        try:
            with self._engine.begin() as connection:
                self._insert_records(connection, [p.record for p in batch])
            return
        except _REFUSED as exc:
            log.warning("audit: batch refused (%s); inserting one by one", _first_line(exc))
            self._heads.clear()
        for pending in batch:
            try:
                with self._engine.begin() as connection:
                    self._insert_records(connection, [pending.record])
            except _REFUSED as exc:
                self._heads.clear()
                log.error(
                    "audit: record %s refused by the database (%s); kept in %s",
                    pending.record.get("id"),
                    _first_line(exc),
                    self._spool.folder / "quarantine.jsonl",
                )
                self._quarantine(pending.record)

    def _quarantine(self, record: dict[str, Any]) -> None:
        path = self._spool.folder / "quarantine.jsonl"
        with open(path, "ab") as file:
            file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())

    def _insert_records(self, connection: Connection, records: list[dict[str, Any]]) -> None:
        present = self._present(connection, records)
        rows: dict[Table, list[dict[str, Any]]] = {
            _RUNS: [],
            _RUN_ENDS: [],
            _ACTIONS: [],
            _EVENTS: [],
            _OUTCOMES: [],
            _OBSERVATIONS: [],
        }
        heads = dict(self._heads)
        actions: dict[str, dict[str, Any]] = {}
        outcomes: list[dict[str, Any]] = []
        for record in records:
            kind = record["t"]
            if (kind, record["id"]) in present:
                continue  # replayed: already in the database
            at = chain.from_ms(record["time_ms"])
            if kind == "run":
                rows[_RUNS].append(
                    {
                        "id": record["id"],
                        "started_at": at,
                        "version": record["version"],
                        "config_hash": record["config_hash"],
                        "host": record["host"],
                    }
                )
            elif kind == "run_end":
                rows[_RUN_ENDS].append({"run_id": record["id"], "ended_at": at})
            elif kind == "observation":
                rows[_OBSERVATIONS].append({
                    "id": record["id"], "time": at, "account_id": record["account_id"],
                    "symbol": record["symbol"], "kind": record["kind"],
                    "detail": record["detail"]})  # fmt: skip
            elif kind == "action":
                action = _action_row(record, at)
                rows[_ACTIONS].append(action)
                actions[action["id"]] = action
                rows[_EVENTS].append(self._chained(connection, heads, {
                    "id": record["event_id"], "action_id": record["id"],
                    "account_id": record["account_id"], "time": at, "kind": "INTENT",
                    "code": None, "message": None, "detail": None, "latency_ms": None,
                }, action))  # fmt: skip
            elif kind == "event":
                rows[_EVENTS].append(self._chained(connection, heads, {
                    "id": record["id"], "action_id": record["action_id"],
                    "account_id": record["account_id"], "time": at, "kind": record["kind"],
                    "code": record["code"], "message": record["message"],
                    "detail": record["detail"], "latency_ms": record["latency_ms"],
                }, None))  # fmt: skip
                if record["kind"] in OUTCOME_KINDS:
                    outcomes.append(rows[_EVENTS][-1])
            else:
                raise ValueError(f"unknown spool record type {kind!r}")
        rows[_OUTCOMES] = _outcome_rows(connection, outcomes, actions)
        for table, values in rows.items():  # parents before children
            if values:
                connection.execute(insert(table), values)
        self._heads = heads

    def _present(
        self, connection: Connection, records: list[dict[str, Any]]
    ) -> set[tuple[str, str]]:
        wanted: dict[str, list[str]] = {}
        for record in records:
            wanted.setdefault(record["t"], []).append(record["id"])
        columns = {
            "run": _RUNS.c.id,
            "run_end": _RUN_ENDS.c.run_id,
            "action": _ACTIONS.c.id,
            "event": _EVENTS.c.id,
            "observation": _OBSERVATIONS.c.id,
        }
        present: set[tuple[str, str]] = set()
        for kind, ids in wanted.items():
            column = columns.get(kind)
            if column is not None:
                found = connection.execute(select(column).where(column.in_(ids))).scalars()
                present.update((kind, found_id) for found_id in found)
        return present

    def _chained(
        self,
        connection: Connection,
        heads: dict[str, tuple[int, str]],
        event: dict[str, Any],
        action: dict[str, Any] | None,
    ) -> dict[str, Any]:
        account = event["account_id"]
        if account not in heads:
            last = connection.execute(
                select(_EVENTS.c.seq, _EVENTS.c.hash)
                .where(_EVENTS.c.account_id == account)
                .order_by(_EVENTS.c.seq.desc())
                .limit(1)
            ).first()
            heads[account] = (0, chain.GENESIS) if last is None else (last.seq, last.hash)
        seq, prev_hash = heads[account]
        event = {**event, "seq": seq + 1, "prev_hash": prev_hash}
        event["hash"] = chain.event_hash(event, action)
        heads[account] = (event["seq"], event["hash"])
        return event


# Errors that retrying cannot fix: the record itself is at fault (a constraint, a value the
# column cannot hold, a malformed spool line). Anything else is the database being away.
_REFUSED = (IntegrityError, DataError, KeyError, TypeError, ValueError)


def _action_row(record: dict[str, Any], at: Any) -> dict[str, Any]:
    def money(name: str) -> Decimal | None:
        value = record[name]
        return None if value is None else Decimal(value)

    return {
        "id": record["id"], "run_id": record["run_id"], "time": at,
        "account_id": record["account_id"], "symbol": record["symbol"],
        "margin_mode": record["margin_mode"], "policy": record["policy"],
        "kind": record["kind"], "amount": money("amount"), "reason": record["reason"],
        "dry_run": record["dry_run"], "mark_price": money("mark_price"),
        "margin": money("margin"), "qty": money("qty"),
        "liquidation_price": money("liquidation_price"), "distance": money("distance"),
        "data_age_ms": record["data_age_ms"], "source": record["source"],
        "details": record["details"] or {},
    }  # fmt: skip


def _outcome_rows(
    connection: Connection, events: list[dict[str, Any]], actions: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The ``action_outcomes`` rows of these outcome events; actions not in the batch are
    read from the database (one query). An event whose action exists nowhere gets no row:
    its own insert fails on the foreign key and it is quarantined."""
    missing = {event["action_id"] for event in events} - actions.keys()
    if missing:
        found = connection.execute(select(_ACTIONS).where(_ACTIONS.c.id.in_(sorted(missing))))
        actions = {**actions, **{row.id: dict(row._mapping) for row in found}}
    return [outcome_row(event, actions[event["action_id"]])
            for event in events if event["action_id"] in actions]  # fmt: skip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
