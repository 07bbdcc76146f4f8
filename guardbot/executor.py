"""The only part of guardbot that changes anything on the exchange (style.md §3).

One worker per account takes approved actions from a priority queue, most endangered
position first (``Intent.urgency``: lower is more urgent), and calls
``POST /v1/position_margin`` through a throttle below the exchange's limit of 10 calls per
second per account (orderly-api.md §5). For every action it writes the audit record
*before* the call and the outcome *after* (design.md, audit log):

- success: ``SUCCEEDED``, then ``VERIFIED`` once a later snapshot shows the new margin;
- ``Rejected``: ``REJECTED`` with the exchange's code and message, never retried;
- ``Uncertain``, or any other unexpected answer (the request may have been applied):
  ``UNCERTAIN``, then the position is re-read and its margin compared with the margin the
  decision saw: ``RECONCILED`` says applied or not. Never a blind retry (design.md, "No
  double top-up");
- ``AuthError``: ``FAILED`` (nothing was applied; the operator must fix the key or clock);
- ``RetryLater``/``RateLimited``: ``FAILED``, back off, re-read the position and hand it back
  so the guard re-decides on fresh data;
- dry-run: the decision is audited and nothing is sent.

A position stays *busy* (no new action for it) from submission until its outcome is known:
verified, rejected, reconciled, or the verification window has passed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from asyncio_throttle.throttler import Throttler

from guardbot import metrics
from guardbot.alerts import Alert, AlertKind
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

log = logging.getLogger(__name__)

# Below the exchange's 10 position_margin calls / s / account, leaving room for clock skew
# between our window and theirs (orderly-api.md §5).
CALLS_PER_SECOND = 8
# Calls of one account in flight at once: enough to keep the throttle busy when the
# exchange is slow, few enough that priorities still decide who goes first.
CONCURRENCY = 4
# How long a successful action waits for a snapshot showing its effect.
VERIFY_WINDOW_MS = 30_000
# Margin within this of the expected value counts as "the change is there".
MARGIN_TOLERANCE = Decimal("0.01")
# The exchange client's read timeout (plus slack): see ``Executor.observe``.
READ_TIMEOUT_MS = 11_000
# Re-read attempts (and their delays) when reconciling an uncertain outcome.
REREAD_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0)


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
    done_ms: int
    reconcile: bool  # True: outcome unknown (Uncertain, re-read failed); False: verify
    sent_ms: int = 0


PositionHandler = Callable[[Position | None, PositionKey], Awaitable[None]]


class Executor:
    """Per-account priority queues, throttled workers, audit of every step.

    ``on_reread(position, key)`` receives positions the executor re-read (after a transient
    failure or while reconciling) so the guard updates its book and re-decides.
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
        clock_ms: Callable[[], int] = now_ms,
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
        self._clock_ms = clock_ms
        self._queues: dict[str, asyncio.PriorityQueue[tuple[Decimal, int, Job, str]]] = {
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
        self._seen: dict[PositionKey, Position] = {}
        self._pending: dict[PositionKey, _Pending] = {}
        self.calls = 0
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # -- what the guard sees ------------------------------------------------------------

    def busy(self) -> frozenset[PositionKey]:
        """Positions with an action queued, in flight, or waiting to be verified/reconciled."""
        return frozenset(self._busy)

    async def submit(self, job: Job) -> str | None:
        """Record the action (its durable intent, which budgets count from now on) and queue
        it. Returns the action id, or ``None`` (nothing recorded) if the position is busy or
        the executor is draining.

        Raises what ``AuditLog.record_action`` raises (``NotRecorded``...): an action that
        could not be recorded is not performed.
        """
        if self._closing or job.key in self._busy:
            return None
        self._busy.add(job.key)
        try:
            action_id = await self._audit.record_action(self._action_record(job))
        except BaseException:
            self._busy.discard(job.key)
            raise
        self._queues[job.intent.account_id].put_nowait(
            (job.intent.urgency, next(self._order), job, action_id)
        )
        return action_id

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
        if abs(position.margin - job.expected_margin()) <= MARGIN_TOLERANCE:
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

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Stop sending: queued actions are recorded as not sent, and calls already on the
        wire get up to ``timeout_s`` to finish and record their outcome. Whatever is still
        open after that is settled by the start-up reconcile of the next run."""
        self._closing = True
        for queue in self._queues.values():
            while not queue.empty():
                _, _, job, action_id = queue.get_nowait()
                await self._audit.record_event(action_id, job.intent.account_id,
                                               EventKind.FAILED, message="not sent: stopping")
                self._busy.discard(job.key)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            log.warning("stopping with %d margin calls still open", self._running)

    # -- workers ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every account's worker until cancelled."""
        async with asyncio.TaskGroup() as group:
            for account_id in self._exchanges:
                group.create_task(self._work(account_id))

    async def _work(self, account_id: str) -> None:
        queue = self._queues[account_id]
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()
                _, _, job, action_id = await queue.get()
                group.create_task(self._run_one(job, action_id, slots))

    async def _run_one(self, job: Job, action_id: str, slots: asyncio.Semaphore) -> None:
        self._running += 1
        self._idle.clear()
        try:
            if self._closing:
                await self._audit.record_event(action_id, job.intent.account_id,
                                               EventKind.FAILED, message="not sent: stopping")
                self._busy.discard(job.key)
                return
            await self._execute(job, action_id)
        except Exception as exc:
            # A bug here must not stop the account's worker. The position stays busy (no
            # further action on it: its state is unknown) until the start-up reconcile
            # looks at it, so the operator is told.
            log.exception("executor failed on %s", job.key)
            self._notify(Alert(AlertKind.UNCERTAIN, job.intent.account_id, job.intent.symbol,
                               f"internal error, position no longer guarded until restart: "
                               f"{type(exc).__name__}"))
        finally:
            slots.release()
            self._running -= 1
            if self._running == 0:
                self._idle.set()

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
            await self._audit.record_event(
                action_id, intent.account_id, EventKind.REJECTED, code=exc.code,
                message=exc.message, latency_ms=_ms_since(started))
            log.warning("%s %s %s on %s rejected: %s %s", intent.policy, intent.kind,
                        intent.amount, intent.symbol, exc.code, exc.message)
            self._notify(Alert(AlertKind.REJECTED, intent.account_id, intent.symbol,
                               f"{intent.kind} {intent.amount} rejected: {exc.message}",
                               {"amount": intent.amount, "code": exc.code,
                                "reason": intent.reason}))
            self._busy.discard(job.key)
        except AuthError as exc:
            outcome = "failed"
            await self._audit.record_event(
                action_id, intent.account_id, EventKind.FAILED, code=exc.code,
                message=str(exc), latency_ms=_ms_since(started))
            log.error("%s on %s failed: %s", intent.kind, intent.symbol, exc)
            self._busy.discard(job.key)
        except ExchangeError as exc:
            # Uncertain, but also anything unexpected (an unparsable answer to a POST):
            # it may have been applied, so it is reconciled, never retried blindly.
            outcome = "uncertain"
            await self._uncertain(job, action_id, str(exc), _ms_since(started))
        else:
            latency = _ms_since(started)
            await self._audit.record_event(action_id, intent.account_id,
                                           EventKind.SUCCEEDED, latency_ms=latency)
            log.info("%s %s USDC on %s by %s: done in %d ms", intent.kind, intent.amount,
                     intent.symbol, intent.policy, latency)
            metrics.MARGIN_MOVED.labels(account=intent.account_id,
                                        kind=intent.kind.value).inc(float(intent.amount))
            self._notify(Alert(AlertKind.ACTION_TAKEN, intent.account_id, intent.symbol,
                               f"{intent.kind} {intent.amount} USDC by {intent.policy}",
                               {"amount": intent.amount, "reason": intent.reason}))
            self._on_applied(intent)
            self._pending[job.key] = _Pending(job, action_id, self._clock_ms(), False, sent_ms)
            seen = self._seen.pop(job.key, None)
            if seen is not None:
                await self.observe(seen)
        finally:
            metrics.ACTIONS.labels(account=intent.account_id, policy=intent.policy,
                                   kind=intent.kind.value, outcome=outcome).inc()

    async def _uncertain(self, job: Job, action_id: str, message: str, latency: int) -> None:
        account_id = job.intent.account_id
        await self._audit.record_event(action_id, account_id, EventKind.UNCERTAIN,
                                       message=message, latency_ms=latency)
        self._notify(Alert(AlertKind.UNCERTAIN, account_id, job.intent.symbol,
                           f"{job.intent.kind} {job.intent.amount}: outcome unknown, "
                           "re-reading the position", {"amount": job.intent.amount}))
        pending = _Pending(job, action_id, self._clock_ms(), True)
        self._pending[job.key] = pending
        exchange = self._exchanges[account_id]
        for delay in self._reread_delays_s:
            await asyncio.sleep(delay)
            try:
                position = await exchange.get_position(job.intent.symbol, job.key[2])
            except ExchangeError as exc:
                log.warning("re-read of %s failed: %s", job.key, exc)
                continue
            if self._pending.get(job.key) is pending:  # a snapshot may have settled it
                await self._record_reconciled(pending, position)
            if self._on_reread is not None:
                await self._on_reread(position, job.key)
            return
        # Still unknown: the position stays busy; the next snapshot reconciles it.
        log.error("could not re-read %s to reconcile action %s", job.key, action_id)

    async def _record_reconciled(self, pending: _Pending, position: Position | None) -> None:
        job = pending.job
        if position is None or not position.is_open:
            was_applied = False
            reason = "position gone; outcome cannot be read from it"
            margin = None
        else:
            margin = position.margin
            was_applied = applied(job, margin)
            reason = "applied" if was_applied else "not applied"
        if was_applied:
            self._on_applied(job.intent)
        await self._settle(pending, EventKind.RECONCILED, reason, margin, applied=was_applied)

    async def _retry_later(
        self, job: Job, action_id: str, exc: RetryLater, latency: int
    ) -> None:
        account_id = job.intent.account_id
        await self._audit.record_event(
            action_id, account_id, EventKind.FAILED,
            code=-1003 if isinstance(exc, RateLimited) else None,
            message=f"not applied, will re-decide: {exc}", latency_ms=latency)
        backoff = exc.retry_after_s if isinstance(exc, RateLimited) else 1.0
        await asyncio.sleep(backoff)
        self._busy.discard(job.key)
        try:
            position = await self._exchanges[account_id].get_position(
                job.intent.symbol, job.key[2])
        except ExchangeError as exc2:
            log.warning("re-read of %s failed: %s", job.key, exc2)
            return
        if self._on_reread is not None:
            await self._on_reread(position, job.key)

    async def _settle(
        self,
        pending: _Pending,
        kind: EventKind,
        message: str,
        margin: Decimal | None,
        **flags: bool,
    ) -> None:
        job = pending.job
        if self._pending.get(job.key) is not pending:
            return
        del self._pending[job.key]
        detail = {name: str(value).lower() for name, value in flags.items()}
        detail["margin_before"] = str(job.position.margin)
        detail["margin_expected"] = str(job.expected_margin())
        if margin is not None:
            detail["margin_seen"] = str(margin)
        try:
            await self._audit.record_event(pending.action_id, job.intent.account_id, kind,
                                           message=message, detail=detail)
        finally:
            # Free the position only once its outcome is on record.
            self._busy.discard(job.key)
        log.info("%s %s on %s: %s %s", job.intent.kind, job.intent.amount, job.intent.symbol,
                 kind, message, extra={"action_id": pending.action_id})

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


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
