"""The only part of guardbot that changes anything on the exchange (style.md §3).

One worker per account takes approved actions from a priority queue, most endangered
position first (``Intent.urgency``: lower is more urgent), and calls
``POST /v1/position_margin`` through a throttle below the exchange's limit of 10 calls per
second per account (orderly-api.md §5). For every action it writes the audit record
*before* the call and the outcome *after* (design.md, audit log):

- success: ``SUCCEEDED``, then ``VERIFIED`` once a later snapshot shows the margin moved at
  least halfway toward the expected margin (``applied``);
- ``Rejected``: ``REJECTED`` with the exchange's code and message, never retried at once: the
  position is held back, longer on every repeat of the same code (exponential, capped);
- ``Uncertain``, or any other unexpected answer (the request may have been applied):
  ``UNCERTAIN``, then ``RECONCILED`` (applied or not) from a read of the position received
  at least a full read timeout after the outcome became unknown: the exchange may still be
  applying a request whose answer we gave up on. Never a blind retry (design.md, "No double
  top-up");
- ``AuthError``: ``FAILED`` (nothing was applied; the operator must fix the key or clock);
- ``RetryLater``/``RateLimited``: ``FAILED``, back off, re-read the position and hand it back
  so the guard re-decides on fresh data;
- data older than ``max_data_age_ms`` when the action is dequeued: ``FAILED``, not sent;
- dry-run: the decision is audited and nothing is sent.

A position stays *busy* (no new action for it) from submission until its outcome is known:
verified, rejected (and its hold-back passed), reconciled, or the verification window has
passed. Waiting (reconcile delays, back-offs) happens outside the worker's concurrency slots.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asyncio_throttle.throttler import Throttler

from guardbot import metrics
from guardbot.alerts import Alert, AlertKind
from guardbot.audit.errors import AuditError
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.domain import ActionKind, Intent, Position, PositionKey
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    RateLimited,
    Rejected,
    RetryLater,
)
from guardbot.exchange.port import Exchange
from guardbot.logs import log_context

log = logging.getLogger(__name__)

# Below the exchange's 10 position_margin calls / s / account, leaving room for clock skew
# between our window and theirs (orderly-api.md §5).
CALLS_PER_SECOND = 8
# Calls of one account in flight at once: enough to keep the throttle busy when the
# exchange is slow, few enough that priorities still decide who goes first.
CONCURRENCY = 4
# How long a successful action waits for a snapshot showing its effect.
VERIFY_WINDOW_MS = 30_000
# The exchange client's read timeout (plus slack): a request we gave up on may still be
# applied until then, so only a read received this long after settles an uncertain action.
READ_TIMEOUT_MS = 11_000
# Re-read attempts (and their delays) once that read timeout has passed.
REREAD_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0)
# A rejected position is held back this long, doubled on every repeat of the same code.
REJECT_BACKOFF_MS = 30_000
REJECT_BACKOFF_MAX_MS = 15 * 60_000

Sleep = Callable[[float], Awaitable[None]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Job:
    """One approved action and the snapshot the decision was based on."""

    intent: Intent
    position: Position
    data_age_ms: int
    liquidation_price: Decimal | None = None
    distance: Decimal | None = None
    dry_run: bool = False
    # When ``data_age_ms`` was measured; the data keeps ageing through the rest of the
    # evaluation, the audit write and the queue (default: from when it was queued).
    measured_ms: int | None = None

    @property
    def key(self) -> PositionKey:
        return self.intent.key

    def expected_margin(self) -> Decimal:
        """The position's margin if the action is applied and nothing else changes."""
        sign = 1 if self.intent.kind is ActionKind.ADD else -1
        return self.position.margin + sign * self.intent.amount


def applied(job: Job, margin_now: Decimal) -> bool:
    """Whether a re-read margin shows the action applied: it moved from the margin the
    decision saw at least halfway toward the expected margin, in the action's direction."""
    moved = margin_now - job.position.margin
    if job.intent.kind is ActionKind.REDUCE:
        moved = -moved
    return moved * 2 >= job.intent.amount


@dataclass(slots=True)
class _Pending:
    job: Job
    action_id: str
    done_ms: int  # when the call ended (reconcile: when the outcome became unknown)
    reconcile: bool  # True: outcome unknown; False: succeeded, to verify
    sent_ms: int = 0
    # Older unfinished actions on the same position (handed over at start-up): the read
    # that settles this one settles them too.
    earlier: list[tuple[Job, str]] = field(default_factory=list)


PositionHandler = Callable[[Position | None, PositionKey], Awaitable[None]]


class Executor:
    """Per-account priority queues, throttled workers, audit of every step.

    ``on_reread(position, key)`` receives positions the executor re-read (after a transient
    failure or while reconciling) so the guard updates its book and re-decides. ``clock_ms``
    and ``sleep`` are injectable so tests run on simulated time.
    """

    def __init__(
        self,
        exchanges: Mapping[str, Exchange],
        audit: AuditLog,
        *,
        on_reread: PositionHandler | None = None,
        notify: Callable[[Alert], None] | None = None,
        on_applied: Callable[[Intent], None] | None = None,
        calls_per_second: int = CALLS_PER_SECOND,
        concurrency: int = CONCURRENCY,
        verify_window_ms: int = VERIFY_WINDOW_MS,
        read_timeout_ms: int = READ_TIMEOUT_MS,
        reread_delays_s: Sequence[float] = REREAD_DELAYS_S,
        max_data_age_ms: int | None = None,
        reject_backoff_ms: int = REJECT_BACKOFF_MS,
        reject_backoff_max_ms: int = REJECT_BACKOFF_MAX_MS,
        clock_ms: Callable[[], int] = now_ms,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._exchanges = dict(exchanges)
        self._audit = audit
        self._on_reread = on_reread
        self._notify = notify or (lambda _alert: None)
        self._on_applied = on_applied or (lambda _intent: None)
        self._concurrency = concurrency
        self._verify_window_ms = verify_window_ms
        self._read_timeout_ms = read_timeout_ms
        self._reread_delays_s = tuple(reread_delays_s)
        self._max_data_age_ms = max_data_age_ms
        self._reject_backoff_ms = reject_backoff_ms
        self._reject_backoff_max_ms = reject_backoff_max_ms
        self._clock_ms = clock_ms
        self._sleep = sleep
        self._queues: dict[str, asyncio.PriorityQueue[tuple[Decimal, int, Job, str, int]]] = {
            account_id: asyncio.PriorityQueue() for account_id in self._exchanges
        }
        self._throttlers = {
            account_id: Throttler(rate_limit=calls_per_second, period=1.0)
            for account_id in self._exchanges
        }
        # Calls of one account pass the throttle in the order they were dispatched (most
        # endangered first): asyncio.Lock wakes its waiters first in, first out.
        self._send_order = {account_id: asyncio.Lock() for account_id in self._exchanges}
        self._order = itertools.count()
        self._busy: set[PositionKey] = set()
        self._held: dict[PositionKey, int] = {}  # rejected: no new action before this time
        self._rejections: dict[tuple[PositionKey, int | None], int] = {}
        self._seen: dict[PositionKey, Position] = {}
        self._pending: dict[PositionKey, _Pending] = {}
        # Per account: calls on the wire, reconciles and back-offs (``release`` awaits them).
        self._tasks: dict[str, set[asyncio.Task[None]]] = {a: set() for a in self._exchanges}
        self._waits: set[asyncio.Task[None]] = set()  # the reconciles and back-offs alone
        self.calls = 0
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # -- what the guard sees ------------------------------------------------------------

    def busy(self) -> frozenset[PositionKey]:
        """Positions with an action queued, in flight, waiting to be verified/reconciled,
        or held back after a rejection."""
        now = self._clock_ms()
        for key in [k for k, until in self._held.items() if until <= now]:
            del self._held[key]
        return frozenset(self._busy | self._held.keys())

    async def submit(self, job: Job) -> str | None:
        """Record the action (its durable intent, which budgets count from now on) and queue
        it. Returns the action id, or ``None`` (nothing recorded) if the position is busy or
        the executor is draining.

        Raises what ``AuditLog.record_action`` raises (``NotRecorded``...): an action that
        could not be recorded is not performed.
        """
        if self._closing or job.key in self.busy():
            return None
        self._busy.add(job.key)
        try:
            action_id = await self._audit.record_action(self._action_record(job))
        except BaseException:
            self._busy.discard(job.key)
            raise
        self._queues[job.intent.account_id].put_nowait(
            (job.intent.urgency, next(self._order), job, action_id, self._clock_ms())
        )
        return action_id

    def reconcile(self, job: Job, action_id: str, unknown_since_ms: int) -> None:
        """Take over an action whose outcome is unknown (a previous run or instance sent it
        and stopped): the position is busy until a read received a full read timeout after
        ``unknown_since_ms`` says whether it was applied, exactly as for our own uncertain
        calls. Call it before ``run``'s workers may act on the position."""
        pending = self._pending.get(job.key)
        if pending is not None and pending.reconcile:
            pending.earlier.append((pending.job, pending.action_id))
            pending.job, pending.action_id = job, action_id
            pending.done_ms = max(pending.done_ms, unknown_since_ms)
            return
        pending = _Pending(job, action_id, unknown_since_ms, True)
        self._busy.add(job.key)
        self._pending[job.key] = pending
        self._wait(job, action_id, self._reconcile_later(pending))

    async def observe(self, position: Position) -> None:
        """Feed a fresh REST/WS snapshot: verifies or reconciles a pending action on it."""
        pending = self._pending.get(position.key)
        if pending is None:
            if position.key in self._busy:
                # The call is on the wire: the exchange may push the change before it
                # answers. Kept to verify against once the answer is in.
                self._seen[position.key] = position
            return
        job = pending.job
        if pending.reconcile:
            # Only a read *requested* after the outcome became unknown can settle it; one
            # received a full read timeout later cannot have been requested before.
            if position.received_ms > pending.done_ms + self._read_timeout_ms:
                await self._record_reconciled(pending, position)
            return
        if position.received_ms < pending.sent_ms:
            return
        # Halfway, not exact: a fill or funding may move the margin too, and must not keep
        # the position blocked for the whole window.
        if applied(job, position.margin):
            await self._settle(pending, EventKind.VERIFIED, "margin shows the change",
                               position.margin)
        elif position.received_ms - pending.done_ms > self._verify_window_ms:
            await self._settle(pending, EventKind.VERIFIED, "margin does not show the change",
                               position.margin, verified=False)

    async def expire(self) -> None:
        """Give up verifying actions whose window passed with no snapshot (position gone)."""
        now = self._clock_ms()
        for pending in list(self._pending.values()):
            if not pending.reconcile and now - pending.done_ms > self._verify_window_ms:
                await self._settle(pending, EventKind.VERIFIED, "no snapshot in the window",
                                   None, verified=False)

    async def forget(self, key: PositionKey) -> None:
        """The position is gone (closed or liquidated): stop waiting on it."""
        pending = self._pending.get(key)
        if pending is not None and not pending.reconcile:
            await self._settle(pending, EventKind.VERIFIED, "position closed", None,
                               verified=False)

    async def release(self, account_id: str) -> None:
        """Stop all work on an account handed to another instance, before it is unlocked:
        queued actions are recorded as not sent; calls on the wire, reconciles and
        back-offs finish and record their outcome before this returns, so the next holder
        sees every action settled or unfinished in the audit log, never one still moving."""
        await self._drop_queued(account_id, "not sent: account handed to another instance")
        while tasks := self._tasks[account_id]:
            await asyncio.wait(set(tasks))
        for key in [k for k in self._pending if k[0] == account_id]:
            # Unsettled ones are the next holder's to reconcile (it reads them as unfinished).
            del self._pending[key]
        for keys in (self._busy, self._seen, self._held):
            for key in [k for k in keys if k[0] == account_id]:
                if isinstance(keys, set):
                    keys.discard(key)
                else:
                    del keys[key]

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Stop sending: queued actions are recorded as not sent, and calls already on the
        wire get up to ``timeout_s`` to finish and record their outcome. Whatever is still
        open after that (reconciles waiting out the read timeout too) is settled by the
        start-up reconcile of the next run."""
        self._closing = True
        for account_id in self._queues:
            await self._drop_queued(account_id, "not sent: stopping")
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("stopping with %d margin calls still open", self._running)
        for task in list(self._waits):
            task.cancel()

    async def _drop_queued(self, account_id: str, message: str) -> None:
        queue = self._queues[account_id]
        while not queue.empty():
            _, _, job, action_id, _ = queue.get_nowait()
            await self._audit.record_event(action_id, account_id, EventKind.FAILED,
                                           message=message)
            self._busy.discard(job.key)

    # -- workers ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every account's worker until cancelled."""
        try:
            async with asyncio.TaskGroup() as group:
                for account_id in self._exchanges:
                    group.create_task(self._work(account_id))
        finally:
            for task in list(self._waits):
                task.cancel()

    async def _work(self, account_id: str) -> None:
        queue = self._queues[account_id]
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()
                _, _, job, action_id, queued_ms = await queue.get()
                task = group.create_task(self._run_one(job, action_id, queued_ms, slots))
                self._track(account_id, task)

    def _track(self, account_id: str, task: asyncio.Task[None]) -> None:
        tasks = self._tasks[account_id]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _wait(self, job: Job, action_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run a reconcile or back-off outside the worker's slots."""
        task = asyncio.get_running_loop().create_task(self._guarded(job, action_id, work))
        self._track(job.intent.account_id, task)
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    async def _guarded(self, job: Job, action_id: str,
                       work: Coroutine[Any, Any, None]) -> None:
        # Every log line of this action names its account, symbol and action id.
        with log_context(account=job.intent.account_id, symbol=job.intent.symbol,
                         action_id=action_id):
            try:
                await work
            except Exception as exc:
                # A bug here must not stop the account's worker. The position stays busy
                # (no further action on it: its state is unknown) until the start-up
                # reconcile looks at it, so the operator is told.
                log.exception("executor failed on %s", job.key)
                self._notify(Alert(AlertKind.UNCERTAIN, job.intent.account_id,
                                   job.intent.symbol,
                                   f"internal error, position no longer guarded until "
                                   f"restart: {type(exc).__name__}"))

    async def _run_one(
        self, job: Job, action_id: str, queued_ms: int, slots: asyncio.Semaphore
    ) -> None:
        self._running += 1
        self._idle.clear()
        try:
            await self._guarded(job, action_id, self._dequeued(job, action_id, queued_ms))
        finally:
            slots.release()
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _dequeued(self, job: Job, action_id: str, queued_ms: int) -> None:
        account_id = job.intent.account_id
        if self._closing:
            await self._audit.record_event(action_id, account_id, EventKind.FAILED,
                                           message="not sent: stopping")
            self._busy.discard(job.key)
            return
        since = queued_ms if job.measured_ms is None else min(job.measured_ms, queued_ms)
        age_ms = job.data_age_ms + self._clock_ms() - since
        if self._max_data_age_ms is not None and age_ms > self._max_data_age_ms:
            # Never act on stale data (design.md): the guard re-decides on fresh data.
            await self._audit.record_event(
                action_id, account_id, EventKind.FAILED,
                message=f"not sent: its data is {age_ms} ms old, above the "
                        f"{self._max_data_age_ms} ms limit")  # fmt: skip
            log.warning("%s %s on %s not sent: data %d ms old", job.intent.kind,
                        job.intent.amount, job.intent.symbol, age_ms)
            self._busy.discard(job.key)
            return
        await self._execute(job, action_id)

    async def _execute(self, job: Job, action_id: str) -> None:
        intent = job.intent
        exchange = self._exchanges[intent.account_id]
        if job.dry_run:
            log.info("dry-run %s %s %s on %s: not sent", intent.policy, intent.kind,
                     intent.amount, intent.symbol)
            await self._audit.record_event(action_id, intent.account_id, EventKind.DRY_RUN,
                                           message="dry-run: not sent")
            self._busy.discard(job.key)
            return
        await self._audit.record_event(action_id, intent.account_id, EventKind.SENT)
        # Throttled right before the call, so audit latency cannot bunch calls together.
        async with self._send_order[intent.account_id]:
            await self._throttlers[intent.account_id].acquire()  # type: ignore[no-untyped-call]
        self._seen.pop(job.key, None)
        sent_ms = self._clock_ms()
        started = time.perf_counter()
        outcome = "succeeded"
        try:
            self.calls += 1
            await exchange.adjust_margin(intent.symbol, intent.kind, intent.amount)
        except RetryLater as exc:
            outcome = "retry_later"
            await self._retry_later(job, action_id, exc, _ms_since(started))
        except Rejected as exc:
            outcome = "rejected"
            await self._rejected(job, action_id, exc, _ms_since(started))
        except AuthError as exc:
            outcome = "failed"
            await self._audit.record_event(
                action_id, intent.account_id, EventKind.FAILED, code=exc.code,
                message=str(exc), latency_ms=_ms_since(started))
            log.error("%s on %s failed: %s", intent.kind, intent.symbol, exc)
            self._busy.discard(job.key)
        except Exception as exc:
            # Uncertain, but also anything unexpected (an unparsable answer to a POST, a
            # bug below us): it may have been applied, so it is reconciled, never retried
            # blindly, and the position is not left blocked.
            outcome = "uncertain"
            if not isinstance(exc, ExchangeError):
                log.exception("unexpected error sending %s on %s", intent.kind, intent.symbol)
            await self._uncertain(job, action_id, str(exc) or type(exc).__name__,
                                  _ms_since(started))
        else:
            latency = _ms_since(started)
            # Applied: wait for its verification first, so an audit failure below cannot
            # leave the position blocked (the unrecorded outcome is reconciled at start-up).
            self._was_applied(intent)
            self._pending[job.key] = _Pending(job, action_id, self._clock_ms(), False, sent_ms)
            try:
                await self._audit.record_event(action_id, intent.account_id,
                                               EventKind.SUCCEEDED, latency_ms=latency)
            except AuditError as exc:
                log.error("%s on %s succeeded but was not recorded: %s", intent.kind,
                          intent.symbol, exc)
            log.info("%s %s USDC on %s by %s: done in %d ms", intent.kind, intent.amount,
                     intent.symbol, intent.policy, latency)
            metrics.MARGIN_MOVED.labels(account=intent.account_id,
                                        kind=intent.kind.value).inc(float(intent.amount))
            self._notify(Alert(AlertKind.ACTION_TAKEN, intent.account_id, intent.symbol,
                               f"{intent.kind} {intent.amount} USDC by {intent.policy}",
                               {"amount": intent.amount, "reason": intent.reason}))
            seen = self._seen.pop(job.key, None)
            if seen is not None:
                await self.observe(seen)
        finally:
            metrics.ACTIONS.labels(account=intent.account_id, policy=intent.policy,
                                   kind=intent.kind.value, outcome=outcome).inc()

    def _was_applied(self, intent: Intent) -> None:
        for key in [k for k in self._rejections if k[0] == intent.key]:
            del self._rejections[key]
        self._on_applied(intent)

    async def _rejected(self, job: Job, action_id: str, exc: Rejected, latency: int) -> None:
        intent = job.intent
        # The same intent would be rejected again on the next mark: hold the position back,
        # longer each time the exchange gives the same reason.
        repeats = self._rejections.get((job.key, exc.code), 0)
        self._rejections[(job.key, exc.code)] = repeats + 1
        hold_ms = min(self._reject_backoff_ms * 2**repeats, self._reject_backoff_max_ms)
        await self._audit.record_event(
            action_id, intent.account_id, EventKind.REJECTED, code=exc.code,
            message=f"{exc.message} (no new action on this position for {hold_ms // 1000} s)",
            latency_ms=latency)
        log.warning("%s %s %s on %s rejected: %s %s; holding back %d s", intent.policy,
                    intent.kind, intent.amount, intent.symbol, exc.code, exc.message,
                    hold_ms // 1000)
        self._notify(Alert(AlertKind.REJECTED, intent.account_id, intent.symbol,
                           f"{intent.kind} {intent.amount} rejected: {exc.message}",
                           {"amount": intent.amount, "code": exc.code,
                            "reason": intent.reason}))
        self._held[job.key] = self._clock_ms() + hold_ms
        self._busy.discard(job.key)

    async def _uncertain(self, job: Job, action_id: str, message: str, latency: int) -> None:
        account_id = job.intent.account_id
        await self._audit.record_event(action_id, account_id, EventKind.UNCERTAIN,
                                       message=message, latency_ms=latency)
        self._notify(Alert(AlertKind.UNCERTAIN, account_id, job.intent.symbol,
                           f"{job.intent.kind} {job.intent.amount}: outcome unknown, "
                           "re-reading the position", {"amount": job.intent.amount}))
        pending = _Pending(job, action_id, self._clock_ms(), True)
        self._pending[job.key] = pending
        self._wait(job, action_id, self._reconcile_later(pending))

    async def _reconcile_later(self, pending: _Pending) -> None:
        """Re-read the position once the exchange cannot still be applying the call."""
        while (wait_ms := pending.done_ms + self._read_timeout_ms - self._clock_ms()) >= 0:
            await self._sleep(wait_ms / 1000 + 0.001)
        key = pending.job.key
        exchange = self._exchanges[key[0]]
        for delay in self._reread_delays_s:
            await self._sleep(delay)
            if self._pending.get(key) is not pending:
                return  # a snapshot settled it meanwhile
            try:
                position = await exchange.get_position(key[1], key[2])
            except ExchangeError as exc:
                log.warning("re-read of %s failed: %s", key, exc)
                continue
            if self._pending.get(key) is pending:
                await self._record_reconciled(pending, position)
            if self._on_reread is not None:
                await self._on_reread(position, key)
            return
        # Still unknown: the position stays busy; the next snapshot reconciles it.
        log.error("could not re-read %s to reconcile action %s", key, pending.action_id)

    async def _record_reconciled(self, pending: _Pending, position: Position | None) -> None:
        seen = position.margin if position is not None and position.is_open else None
        for job, action_id in pending.earlier:
            was = seen is not None and applied(job, seen)
            await self._audit.record_event(
                action_id, job.intent.account_id, EventKind.RECONCILED,
                message="applied" if was else "not applied",
                detail=_detail(job, seen, applied=was))
        job = pending.job
        if position is None or not position.is_open:
            # Closed or liquidated meanwhile: its margin no longer says whether the call
            # landed. Recorded as unknown, never as "not applied": the budget keeps counting
            # it (only FAILED/REJECTED/SKIPPED release budget) and no report claims it failed.
            await self._settle(pending, EventKind.RECONCILED,
                               "outcome unknown: position gone before it could be read",
                               None, applied="unknown")
            return
        margin = position.margin
        was_applied = applied(job, margin)
        if was_applied:
            self._was_applied(job.intent)
        await self._settle(pending, EventKind.RECONCILED,
                           "applied" if was_applied else "not applied", margin,
                           applied=was_applied)

    async def _retry_later(
        self, job: Job, action_id: str, exc: RetryLater, latency: int
    ) -> None:
        await self._audit.record_event(
            action_id, job.intent.account_id, EventKind.FAILED,
            code=-1003 if isinstance(exc, RateLimited) else None,
            message=f"not applied, will re-decide: {exc}", latency_ms=latency)
        backoff = exc.retry_after_s if isinstance(exc, RateLimited) else 1.0
        self._wait(job, action_id, self._back_off(job, backoff))

    async def _back_off(self, job: Job, backoff_s: float) -> None:
        await self._sleep(backoff_s)
        self._busy.discard(job.key)
        try:
            position = await self._exchanges[job.intent.account_id].get_position(
                job.intent.symbol, job.key[2])
        except ExchangeError as exc:
            log.warning("re-read of %s failed: %s", job.key, exc)
            return
        if self._on_reread is not None:
            await self._on_reread(position, job.key)

    async def _settle(
        self,
        pending: _Pending,
        kind: EventKind,
        message: str,
        margin: Decimal | None,
        **flags: bool | str,
    ) -> None:
        job = pending.job
        if self._pending.get(job.key) is not pending:
            return
        del self._pending[job.key]
        try:
            await self._audit.record_event(pending.action_id, job.intent.account_id, kind,
                                           message=message, detail=_detail(job, margin, **flags))
        finally:
            # Free the position only once its outcome is on record.
            self._busy.discard(job.key)
        log.info("%s %s on %s: %s %s", job.intent.kind, job.intent.amount, job.intent.symbol,
                 kind, message, extra={"action_id": pending.action_id,
                                       "account": job.intent.account_id,
                                       "symbol": job.intent.symbol})

    def _action_record(self, job: Job) -> ActionRecord:
        intent, position = job.intent, job.position
        return ActionRecord(
            account_id=intent.account_id,
            symbol=intent.symbol,
            margin_mode=position.margin_mode,
            policy=intent.policy,
            kind=intent.kind,
            amount=intent.amount,
            reason=intent.reason,
            mark_price=position.mark_price,
            margin=position.margin,
            qty=position.qty,
            liquidation_price=job.liquidation_price,
            distance=job.distance,
            data_age_ms=job.data_age_ms,
            source=position.source,
            dry_run=job.dry_run,
            details=intent.details,
        )


def _detail(job: Job, margin: Decimal | None, **flags: bool | str) -> dict[str, str]:
    detail = {name: str(value).lower() for name, value in flags.items()}
    detail["margin_before"] = str(job.position.margin)
    detail["margin_expected"] = str(job.expected_margin())
    if margin is not None:
        detail["margin_seen"] = str(margin)
    return detail


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
