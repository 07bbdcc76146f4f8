"""The database writer: copies spooled audit records into the database, in order and in
batches, in the background.

``AuditLog`` (``guardbot.audit.store``) hands it each batch once it is fsync'd to the spool
(``add``). One task (``run``) inserts them; while the database is unreachable it retries
with back-off and the records simply wait, in memory and in the spool. Replay is idempotent:
records already in the database (a batch replayed after a crash) are skipped, so each is
inserted once. Each account's hash chain (``chain.py``) is extended in the same transaction
as the insert. A record the database refuses (a constraint, a value the column cannot hold)
is set aside in the spool folder's ``quarantine.jsonl`` rather than blocking the ones after
it. Spool segments are released once everything in them is committed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert, select
from sqlalchemy.exc import DataError, IntegrityError

from guardbot.audit import chain
from guardbot.audit.errors import first_line
from guardbot.audit.records import Record
from guardbot.audit.spool import Spool
from guardbot.audit.tables import (
    ACTIONS,
    COMMANDS,
    EVENTS,
    OBSERVATIONS,
    OUTCOME_KINDS,
    OUTCOMES,
    RUN_ENDS,
    RUNS,
    outcome_row,
)
from guardbot.backoff import backoff
from guardbot.clock import Clock

log = logging.getLogger(__name__)

# Back-off cap while the database is down. One connection attempt every few seconds costs
# the database nothing, and it bounds how long after its return the spool is replayed (the
# budgets and /readyz follow the replay).
MAX_RETRY_S = 5.0


@dataclass(slots=True)
class Pending:
    """A spooled record waiting for the database, and the spool segment that holds it."""

    record: Record
    segment: int


class DatabaseWriter:
    """Writes spooled records to the database (see the module docstring).

    ``idle()`` says whether the audit log holds no record on its way to the spool: only then
    does an empty queue mean everything is written (``drained``). ``on_progress`` is called
    whenever records leave the queue.
    """

    def __init__(
        self,
        engine: Engine,
        spool: Spool,
        clock: Clock,
        *,
        batch_size: int,
        retry_s: float,
        idle: Callable[[], bool],
        on_progress: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._spool = spool
        self._clock = clock
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._idle = idle
        self._on_progress = on_progress
        self.pending: deque[Pending] = deque()
        self.drained = asyncio.Event()
        self.drained.set()
        self._wakeup = asyncio.Event()
        # hurry() cuts a retry back-off short; new records do not (no hammering an outage).
        self._retry_now = asyncio.Event()
        self._heads: dict[str, tuple[int, str]] = {}
        self._down_since: float | None = None
        self.last_error: str | None = None

    @property
    def database_ok(self) -> bool:
        """Whether the latest write succeeded (``True`` until one fails)."""
        return self._down_since is None

    def add(self, pending: Iterable[Pending]) -> None:
        """Queue spooled records, in spool order."""
        self.pending.extend(pending)
        self._wakeup.set()

    def hurry(self) -> None:
        """Write now, even in the middle of a retry back-off; ``drained`` is set again once
        everything is written."""
        self.drained.clear()
        self._wakeup.set()
        self._retry_now.set()

    async def run(self) -> None:
        """Write until cancelled."""
        delays = backoff(self._retry_s, MAX_RETRY_S)
        while True:
            if not self.pending:
                if self._idle():
                    self.drained.set()
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch = [self.pending[i] for i in range(min(self._batch_size, len(self.pending)))]
            self._retry_now.clear()
            try:
                await asyncio.to_thread(self._insert, batch)
            except Exception as exc:  # any failure: keep the records, retry
                self._heads.clear()
                self._report_down(exc)
                await self._retry_after(next(delays))
                continue
            delays = backoff(self._retry_s, MAX_RETRY_S)
            if self._down_since is not None:
                log.warning(
                    "audit: database back after %.1f s; spool replayed",
                    self._clock.monotonic() - self._down_since,
                )
                self._down_since = None
            for _ in batch:
                self.pending.popleft()
            self._on_progress()
            await self._release_segments()

    async def _retry_after(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next write attempt, or less if ``hurry`` asks."""
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
        limit = self.pending[0].segment if self.pending else active
        for number in self._spool.segments():
            if number < limit and number != active:
                await asyncio.to_thread(self._spool.release, number)

    def _report_down(self, exc: Exception) -> None:
        self.last_error = first_line(exc)
        if self._down_since is None:
            self._down_since = self._clock.monotonic()
            log.warning("audit: database unavailable, spooling locally: %s", first_line(exc))
        else:
            log.debug("audit: database still unavailable: %s", first_line(exc))

    def _insert(self, batch: list[Pending]) -> None:
        """Insert a batch in one transaction; on a constraint error, one record at a time,
        setting aside (logged, kept in ``quarantine.jsonl``) those the database refuses."""
        try:
            with self._engine.begin() as connection:
                self._insert_records(connection, [p.record for p in batch])
            return
        except _REFUSED as exc:
            log.warning("audit: batch refused (%s); inserting one by one", first_line(exc))
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
                    first_line(exc),
                    self._spool.folder / "quarantine.jsonl",
                )
                self._quarantine(pending.record)

    def _quarantine(self, record: Record) -> None:
        path = self._spool.folder / "quarantine.jsonl"
        with open(path, "ab") as file:
            file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())

    def _insert_records(self, connection: Connection, records: list[Record]) -> None:
        present = self._present(connection, records)
        rows: dict[Table, list[dict[str, Any]]] = {
            RUNS: [],
            RUN_ENDS: [],
            ACTIONS: [],
            EVENTS: [],
            OUTCOMES: [],
            OBSERVATIONS: [],
            COMMANDS: [],
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
                rows[RUNS].append(
                    {
                        "id": record["id"],
                        "started_at": at,
                        "version": record["version"],
                        "config_hash": record["config_hash"],
                        "host": record["host"],
                    }
                )
            elif kind == "run_end":
                rows[RUN_ENDS].append({"run_id": record["id"], "ended_at": at})
            elif kind == "observation":
                rows[OBSERVATIONS].append({
                    "id": record["id"], "time": at, "account_id": record["account_id"],
                    "symbol": record["symbol"], "kind": record["kind"],
                    "detail": record["detail"]})  # fmt: skip
            elif kind == "command":
                rows[COMMANDS].append({
                    "id": record["id"], "run_id": record["run_id"], "time": at,
                    **{name: record[name] for name in (
                        "channel", "chat_id", "sender", "command", "arguments", "result",
                        "message", "detail")}})  # fmt: skip
            elif kind == "action":
                action = _action_row(record, at)
                rows[ACTIONS].append(action)
                actions[action["id"]] = action
                rows[EVENTS].append(self._chained(connection, heads, {
                    "id": record["event_id"], "action_id": record["id"],
                    "account_id": record["account_id"], "time": at, "kind": "INTENT",
                    "code": None, "message": None, "detail": None, "latency_ms": None,
                }, action))  # fmt: skip
            elif kind == "event":
                rows[EVENTS].append(self._chained(connection, heads, {
                    "id": record["id"], "action_id": record["action_id"],
                    "account_id": record["account_id"], "time": at, "kind": record["kind"],
                    "code": record["code"], "message": record["message"],
                    "detail": record["detail"], "latency_ms": record["latency_ms"],
                }, None))  # fmt: skip
                if record["kind"] in OUTCOME_KINDS:
                    outcomes.append(rows[EVENTS][-1])
            else:
                raise ValueError(f"unknown spool record type {kind!r}")
        rows[OUTCOMES] = _outcome_rows(connection, outcomes, actions)
        for table, values in rows.items():  # parents before children
            if values:
                connection.execute(insert(table), values)
        self._heads = heads

    def _present(
        self, connection: Connection, records: list[Record]
    ) -> set[tuple[str, str]]:
        wanted: dict[str, list[str]] = {}
        for record in records:
            wanted.setdefault(record["t"], []).append(record["id"])
        columns = {
            "run": RUNS.c.id,
            "run_end": RUN_ENDS.c.run_id,
            "action": ACTIONS.c.id,
            "event": EVENTS.c.id,
            "observation": OBSERVATIONS.c.id,
            "command": COMMANDS.c.id,
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
                select(EVENTS.c.seq, EVENTS.c.hash)
                .where(EVENTS.c.account_id == account)
                .order_by(EVENTS.c.seq.desc())
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


def _action_row(record: Record, at: Any) -> dict[str, Any]:
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
        found = connection.execute(select(ACTIONS).where(ACTIONS.c.id.in_(sorted(missing))))
        actions = {**actions, **{row.id: dict(row._mapping) for row in found}}
    return [outcome_row(event, actions[event["action_id"]])
            for event in events if event["action_id"] in actions]  # fmt: skip


