"""``AuditLog``: the daemon's durable, append-only record of every decision and call.

Every ``record_*`` call returns once its record is fsync'd to the local spool (group
commit, in a worker thread: the event loop never blocks). The database writer
(``guardbot.audit.writer``) then copies spooled records, in order and in batches, into the
database; while the database is unreachable records simply wait in the spool. What a record
holds, and how it is checked, is ``guardbot.audit.records``.

Every record also goes to the budget ledger (``self.ledger``, ``guardbot.audit.ledger``)
before it is durable, so budgets never wait on the database and already count records still
in the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from guardbot import metrics
from guardbot.audit import queries
from guardbot.audit.database import create_audit_engine
from guardbot.audit.errors import (
    AuditError,
    AuditUnavailable,
    MigrationsNotFound,
    NotRecorded,
    SchemaOutOfDate,
    first_line,
)
from guardbot.audit.ledger import Ledger, SqlHistory
from guardbot.audit.records import (
    NOT_APPLIED,
    SETTLED,
    ActionRecord,
    CommandRecord,
    EventKind,
    Record,
    UnfinishedAction,
    action_record,
    command_record,
    event_record,
    observation_record,
    run_end_record,
    run_record,
)
from guardbot.audit.schema import check_schema
from guardbot.audit.spool import SEGMENT_BYTES, Spool, SpoolInUse, SpoolWriter
from guardbot.audit.writer import DatabaseWriter, Pending
from guardbot.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "NOT_APPLIED",
    "SETTLED",
    "ActionRecord",
    "AuditError",
    "AuditLog",
    "AuditUnavailable",
    "CommandRecord",
    "EventKind",
    "MigrationsNotFound",
    "NotRecorded",
    "SchemaOutOfDate",
    "SpoolInUse",
    "UnfinishedAction",
]

log = logging.getLogger(__name__)



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
        self._run_ids: set[str] = set()
        self._run_id: str | None = None
        # record_* -> the spool writer (fsync) -> the database writer -> the database.
        self._spooler = SpoolWriter(spool, self._spooled)
        self._writer = DatabaseWriter(
            engine, spool, clock, batch_size=batch_size, retry_s=retry_s,
            idle=lambda: not self._spooler.incoming, on_progress=self._update_depth)
        self._closing = False
        self.ledger = Ledger(SqlHistory(engine))
        # Called with every record once it is durable (the live view, guardbot.view.state).
        self._listeners: list[Callable[[Record], None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None

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
            raise AuditUnavailable(f"cannot reach the audit database: {first_line(exc)}") from None
        except AuditError:
            engine.dispose()
            raise
        spool = await asyncio.to_thread(Spool, spool_dir, segment_bytes)
        audit = cls(engine, spool, clock, batch_size, retry_s)
        await audit._replay_spool()
        audit._flusher = asyncio.create_task(audit._spooler.run(), name="audit-spool")
        audit._writing = asyncio.create_task(audit._writer.run(), name="audit-writer")
        return audit

    async def _replay_spool(self) -> None:
        def read() -> list[Pending]:
            return [
                Pending(record, number)
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
        self._writer.add(replayed)
        self._update_depth()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for queries and tests)."""
        return self._engine

    @property
    def spool_depth(self) -> int:
        """Records waiting for the database (in the spool, not yet committed)."""
        return len(self._writer.pending) + len(self._spooler.incoming)

    @property
    def database_ok(self) -> bool:
        """Whether the writer's latest database write succeeded (``True`` from ``open``, which
        reached the database). While it is ``False`` records wait in the spool. Only writes
        update it: an idle log notices an outage with its next record."""
        return self._writer.database_ok

    @property
    def last_database_error(self) -> str | None:
        """The first line of the latest failed database write's error (no SQL, no
        parameters), kept after the database returns for diagnosis; ``None`` if no write
        has failed since ``open``."""
        return self._writer.last_error

    @property
    def run_id(self) -> str | None:
        """The run started by ``start_run``."""
        return self._run_id

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record so far is in the database. Raises ``AuditUnavailable``
        after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._spooler.incoming or self._writer.pending:
                    self._writer.hurry()
                    self._spooler.wake()
                    await self._writer.drained.wait()
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
        # The spool writer is never cancelled mid-write: it stops once everything is spooled.
        self._spooler.close()
        if self._flusher is not None:
            await self._flusher
        if self._writing is not None:
            self._writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writing
        drained = not self._writer.pending and not self._spooler.incoming
        await asyncio.to_thread(self._spool.close, drained)
        self._engine.dispose()

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- recording -----------------------------------------------------------------------

    async def start_run(self, version: str, config_hash: str, host: str) -> str:
        """Record a daemon start; returns the run id actions default to."""
        record = run_record(self._clock.now_ms(), version, config_hash, host)
        run_id: str = record["id"]
        await self._submit(record)
        self._run_ids.add(run_id)
        self._run_id = run_id
        return run_id

    async def end_run(self) -> None:
        """Record the orderly stop of the current run."""
        if self._run_id is None:
            raise AuditError("end_run without start_run")
        await self._submit(run_end_record(self._run_id, self._clock.now_ms()))
        self._run_id = None

    async def record_action(self, action: ActionRecord) -> str:
        """Record a decided action and its INTENT event; returns the action id once durable.

        Raises ``ValueError`` for a record that cannot be stored faithfully and
        ``NotRecorded`` if the spool cannot be written (then do not perform the action).
        """
        run_id = action.run_id or self._run_id
        if run_id is None or run_id not in self._run_ids:
            raise ValueError(f"unknown run_id {run_id!r}: call start_run first")
        record = action_record(action, run_id, self._clock.now_ms())
        await self._submit(record)
        action_id: str = record["id"]
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
        await self._submit(event_record(
            action_id, account_id, kind, self._clock.now_ms(), code=code, message=message,
            detail=detail, latency_ms=latency_ms))

    async def record_observation(
        self, account_id: str, symbol: str | None, kind: str, detail: Mapping[str, str],
        *, at_ms: int | None = None,
    ) -> None:
        """Record something the bot saw but did not cause (liquidation, margin changed by
        someone else, budget state); ``at_ms``: when it was seen, if before now (a close
        whose cause took a read to find)."""
        await self._submit(observation_record(
            account_id, symbol, kind, detail, self._clock.now_ms() if at_ms is None else at_ms))

    async def record_command(self, command: CommandRecord) -> None:
        """Record an operator's command and what came of it (durable on return)."""
        await self._submit(command_record(command, command.run_id or self._run_id,
                                          self._clock.now_ms()))

    def listen(self, callback: Callable[[Record], None]) -> None:
        """Call ``callback(record)`` with every record from now on, once it is durable. It
        runs in the event loop on the recording path: it must be quick; what it raises is
        logged, never passed to the recording caller."""
        self._listeners.append(callback)

    async def _submit(self, record: Record) -> None:
        if self._closing:
            raise AuditError("the audit log is closed")
        # Noted before it is durable: budgets count in-flight actions (conservative).
        undo = self.ledger.note(record)
        try:
            await self._spooler.append(record)
        except NotRecorded:
            if undo is not None:
                undo()
            raise
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                # The record is durable: a listener's bug (the live view) must not make its
                # caller believe it was not, and drop an action it already recorded.
                log.exception("audit listener failed on a %s record", record.get("t"))

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
            found = await asyncio.to_thread(queries.unfinished_actions, self._engine, accounts)
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"cannot read unfinished actions: {first_line(exc)}") from None
        for account in accounts:
            await self.ledger.load(account, self._clock.now_ms(), again=True)
        return found

    def _spooled(self, records: list[Record], segment: int) -> None:
        self._writer.add(Pending(record, segment) for record in records)
        self._update_depth()

    def _update_depth(self) -> None:
        metrics.SPOOL_DEPTH.set(self.spool_depth)
