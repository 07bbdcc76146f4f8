"""The only part of guardbot that changes anything on the exchange.

One worker per account takes approved actions from a priority queue, most endangered
position first (``Intent.urgency``: lower is more urgent), and calls
``POST /v1/position_margin`` (the exchange client's rate limiter keeps the calls under the
exchange's limit, ``guardbot.exchange.limits``). For every action it writes the audit record
*before* the call and the outcome *after*; what became of a call is ``Settlement``'s to
decide, from the evidence this module feeds it (``guardbot.settlement``):

- success: ``SUCCEEDED``, then ``VERIFIED`` once a snapshot shows the margin moved;
- ``Rejected``: ``REJECTED`` with the exchange's code and message, never retried at once:
  the position is held back, longer on every repeat of the same code (exponential, capped);
- ``Uncertain``, or any other unexpected answer (the request may have been applied):
  ``UNCERTAIN``; the position is read at once and again after the settle window, and
  ``RECONCILED`` (applied or not) follows from the first snapshot that shows it. Never a
  blind retry: a further ADD is the guard's decision, on fresh data;
- ``AuthError``: ``FAILED`` (nothing was applied; the operator must fix the key or clock).
  The position is held back ``AUTH_BACKOFF_MS``, doubling on repeats up to the rejection
  hold-back: not again on every mark tick, yet a host clock put right (or a key renewed)
  lets the next rescue out within seconds, not half a minute later;
- ``RetryLater``/``RateLimited``: ``FAILED``, back off, re-read the position and hand it back
  so the guard re-decides on fresh data;
- data older than ``max_data_age_ms`` when the action is dequeued, a position that closed
  while it waited, the kill switch, or this instance's ownership of the account lapsed
  (``may_act``: a peer may have taken it over): ``FAILED``, not sent;
- dry-run: the decision is audited and nothing is sent.

A position is *busy* (nothing new is decided for it) while an action on it is queued or
on the wire. After a rejection (or an authentication failure, or a rate limit) the kind of
action refused is *held back* on it for a while; the other kind is not, so a refused sweep
never stands in the way of a rescue. Calls that are not settled yet do not block
it: the guard may still rescue it (docs/architecture.md, "Rescues"). Waiting (reads, back-offs)
happens outside the worker's concurrency slots.
"""

# Size (about 540 lines, Executor about 430): one class on purpose. Every step of a margin
# call (dequeue, data-age check, intent record, send, outcome record, hold-back, reads for
# settlement) shares the per-position queue and blocked state; split across classes, the
# rule that nothing is sent without a recorded intent would be spread over files. The money
# path is under review: only code moves that change nothing belong here.

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from guardbot import backoff, metrics
from guardbot.alerts import Alert, AlertKind
from guardbot.audit.errors import AuditError
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.clock import SYSTEM_CLOCK, Clock
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
from guardbot.settlement import Read, Settled, Settlement

log = logging.getLogger(__name__)

# Why a call did not leave once this instance's ownership lease on the account lapsed.
LAPSED = "not sent: this instance's ownership of the account lapsed"

# Calls of one account in flight at once: enough to keep the exchange's rate busy when it
# is slow, few enough that priorities still decide who goes first.
CONCURRENCY = 4
# Re-read attempts (and their delays) for a read that fails.
REREAD_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 5.0)
# A rejected position is held back this long, doubled on every repeat of the same code.
REJECT_BACKOFF_MS = 30_000
REJECT_BACKOFF_MAX_MS = 15 * 60_000
# After an authentication failure (a bad key, or this host's clock outside the exchange's
# timestamp window): the first hold-back, doubled on repeats up to ``reject_backoff_ms``.
AUTH_BACKOFF_MS = 2_000


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

    def record(self) -> ActionRecord:
        """The audit record of this action and the snapshot it was decided on."""
        intent, position = self.intent, self.position
        return ActionRecord(
            account_id=intent.account_id, symbol=intent.symbol,
            margin_mode=position.margin_mode, policy=intent.policy, kind=intent.kind,
            amount=intent.amount, reason=intent.reason, dry_run=self.dry_run,
            mark_price=position.mark_price, margin=position.margin, qty=position.qty,
            liquidation_price=self.liquidation_price, distance=self.distance,
            data_age_ms=self.data_age_ms, source=position.source, details=intent.details,
        )  # fmt: skip


PositionHandler = Callable[[Position | None, PositionKey], Awaitable[None]]


class Executor:
    """Per-account priority queues, workers, and the audit of every step.

    ``on_reread(position, key)`` receives positions the executor read (for evidence, or
    after a transient failure) so the guard updates its book, feeds them back through
    ``observe`` and re-decides.
    """

    def __init__(
        self,
        exchanges: Mapping[str, Exchange],
        audit: AuditLog,
        *,
        clock: Clock = SYSTEM_CLOCK,
        settlement: Settlement | None = None,
        on_reread: PositionHandler | None = None,
        notify: Callable[[Alert], None] | None = None,
        concurrency: int = CONCURRENCY,
        reread_delays_s: Sequence[float] = REREAD_DELAYS_S,
        max_data_age_ms: int | None = None,
        paused: Callable[[], bool] = lambda: False,
        may_act: Callable[[str], bool] = lambda _account_id: True,
        reject_backoff_ms: int = REJECT_BACKOFF_MS,
        reject_backoff_max_ms: int = REJECT_BACKOFF_MAX_MS,
    ) -> None:
        self._exchanges = dict(exchanges)
        self._audit = audit
        self._clock = clock
        self.settlement = settlement or Settlement()
        self._on_reread = on_reread
        self._notify = notify or (lambda _alert: None)
        self._concurrency = concurrency
        self._reread_delays_s = tuple(reread_delays_s)
        self._max_data_age_ms = max_data_age_ms
        self._paused = paused  # the kill switch: nothing queued goes out while it is on
        # Whether this instance still owns the account (its ownership lease): asked as each
        # call leaves, so an instance woken after a peer took the account over sends nothing.
        self._may_act = may_act
        self._reject_backoff_ms = reject_backoff_ms
        self._reject_backoff_max_ms = reject_backoff_max_ms
        self._queues: dict[str, asyncio.PriorityQueue[tuple[Decimal, int, Job, str, int]]] = {
            account_id: asyncio.PriorityQueue() for account_id in self._exchanges
        }
        self._order = itertools.count()
        # Positions with an action queued, and the newest such action (an older job's
        # end must not unmark a newer one queued meanwhile).
        self._queued: dict[PositionKey, str] = {}
        # Held back (rejected, refused or rate limited): no new action before this time, on
        # the monotonic clock: a host clock stepped by NTP must not stretch or cut a hold.
        # Held per kind: a rejected sweep must not hold back a rescue ADD.
        self._held: dict[tuple[PositionKey, ActionKind], float] = {}
        # Refusals in a row per (position, kind, code): what a hold-back doubles on. Per
        # kind, like the hold itself: refused sweeps must not lengthen a rescue's hold.
        self._rejections: dict[tuple[PositionKey, ActionKind, int | None], int] = {}
        self._closed_ms: dict[PositionKey, int] = {}  # queued before this: not sent
        # Per account: calls on the wire, reads and back-offs (``release`` awaits them).
        self._tasks: dict[str, set[asyncio.Task[None]]] = {a: set() for a in self._exchanges}
        self._waits: set[asyncio.Task[None]] = set()  # the reads and back-offs alone
        self.calls = 0
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    # -- what the guard sees ------------------------------------------------------------

    def busy(self) -> frozenset[PositionKey]:
        """Positions with an action queued or on the wire: nothing new is decided for them."""
        return frozenset(self._queued.keys() | self.settlement.sending_keys())

    def held(self) -> dict[PositionKey, frozenset[ActionKind]]:
        """Positions held back after a rejection (or a refusal, or a rate limit), and the
        kinds of action held: the kind that was refused, not the other one."""
        now = self._clock.monotonic()
        for hold in [h for h, until in self._held.items() if until <= now]:
            del self._held[hold]
        kinds: dict[PositionKey, set[ActionKind]] = {}
        for key, kind in self._held:
            kinds.setdefault(key, set()).add(kind)
        return {key: frozenset(found) for key, found in kinds.items()}

    def blocked(self) -> frozenset[PositionKey]:
        """Positions busy, or held back for some kind of action."""
        return self.busy() | self.held().keys()

    async def submit(self, job: Job) -> str | None:
        """Record the action (its durable intent, which budgets count from now on) and queue
        it. Returns the action id, or ``None`` (nothing recorded) if the position is
        blocked or the executor is draining.

        Raises what ``AuditLog.record_action`` raises (``NotRecorded``...): an action that
        could not be recorded is not performed.
        """
        if (self._closing or job.key in self.busy()
                or job.intent.kind in self.held().get(job.key, ())):
            return None
        self._queued[job.key] = placeholder = f"recording-{next(self._order)}"
        try:
            action_id = await self._audit.record_action(job.record())
        except BaseException:
            self._unqueue(job.key, placeholder)
            raise
        if self._queued.get(job.key) == placeholder:
            self._queued[job.key] = action_id
        self._queues[job.intent.account_id].put_nowait(
            (job.intent.urgency, next(self._order), job, action_id, self._clock.now_ms())
        )
        return action_id

    async def refused(self, job: Job, reason: str) -> None:
        """Record an intent the arbiter refused (a ``SKIPPED`` action with the reason)."""
        action_id = await self._audit.record_action(job.record())
        await self._audit.record_event(action_id, job.intent.account_id, EventKind.SKIPPED,
                                       message=reason)

    def adopt(self, action_id: str, record: ActionRecord, unknown_since_ms: int) -> None:
        """Take over an action whose outcome is unknown (a previous run or instance sent it
        and stopped): settled from evidence exactly as our own uncertain calls. Call it
        before ``run``'s workers may act on the position."""
        key = (record.account_id, record.symbol, record.margin_mode)
        settled, reads = self.settlement.adopt(action_id, key, record.kind, record.amount,
                                               record.margin, record.qty, unknown_since_ms)
        self._settled_later(settled)
        self._read_later(key, action_id, reads)

    async def observe(self, position: Position) -> None:
        """Feed a fresh REST/WS snapshot: evidence for the position's unsettled calls."""
        margin = position.margin if position.is_open else None
        await self._record(self.settlement.observe(position.key, margin, position.qty,
                                                   position.received_ms))

    async def closed(self, key: PositionKey) -> None:
        """The position is gone (closed or liquidated): its calls are settled, its queued
        actions will not be sent, and a new position on the symbol starts with nothing
        held against it."""
        now = self._clock.now_ms()
        self._closed_ms[key] = now
        for hold in [h for h in self._held if h[0] == key]:
            del self._held[hold]
        for rejection in [r for r in self._rejections if r[0] == key]:
            del self._rejections[rejection]
        await self._record(self.settlement.closed(key))

    async def expire(self) -> None:
        """Settle succeeded calls no snapshot showed within the verify window."""
        await self._record(self.settlement.expire(self._clock.now_ms()))

    async def release(self, account_id: str) -> None:
        """Stop all work on an account handed to another instance, before it is unlocked:
        queued actions are recorded as not sent; calls on the wire, reads and back-offs
        finish and record their outcome before this returns, so the next holder sees every
        action settled or unfinished in the audit log, never one still moving."""
        await self._drop_queued(account_id, "not sent: account handed to another instance")
        while tasks := self._tasks[account_id]:
            await asyncio.wait(set(tasks))
        # Unsettled calls are the next holder's to reconcile (it reads them as unfinished).
        self.settlement.drop_account(account_id)
        for key in [k for k in self._queued if k[0] == account_id]:
            del self._queued[key]
        for hold in [h for h in self._held if h[0][0] == account_id]:
            del self._held[hold]
        for key in [k for k in self._closed_ms if k[0] == account_id]:
            del self._closed_ms[key]

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Stop sending: queued actions are recorded as not sent, and calls already on the
        wire get up to ``timeout_s`` to finish and record their outcome. Whatever is still
        unsettled after that is settled by the start-up reconcile of the next run."""
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
            self._unqueue(job.key, action_id)

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

    def _wait(self, key: PositionKey, action_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run a read or back-off outside the worker's slots."""
        task = asyncio.get_running_loop().create_task(self._guarded(key, action_id, work))
        self._track(key[0], task)
        self._waits.add(task)
        task.add_done_callback(self._waits.discard)

    async def _guarded(self, key: PositionKey, action_id: str,
                       work: Coroutine[Any, Any, None]) -> None:
        # Every log line of this action names its account, symbol and action id.
        with log_context(account=key[0], symbol=key[1], action_id=action_id):
            try:
                await work
            except Exception as exc:
                # A bug here must not stop the account's worker; the operator is told, and
                # the action's outcome is settled by the next snapshot or the next start.
                log.exception("executor failed on action %s", action_id)
                self._notify(Alert(AlertKind.UNCERTAIN, key[0], key[1],
                                   f"internal error on a margin call: {type(exc).__name__}"))

    async def _run_one(
        self, job: Job, action_id: str, queued_ms: int, slots: asyncio.Semaphore
    ) -> None:
        self._running += 1
        self._idle.clear()
        try:
            await self._guarded(job.key, action_id, self._dequeued(job, action_id, queued_ms))
        finally:
            self._unqueue(job.key, action_id)
            slots.release()
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _dequeued(self, job: Job, action_id: str, queued_ms: int) -> None:
        account_id = job.intent.account_id
        reason = None
        if self._closing:
            reason = "not sent: stopping"
        elif queued_ms <= self._closed_ms.get(job.key, -1):
            reason = "not sent: the position closed while the action waited"
        elif self._paused():
            reason = "not sent: the kill switch is engaged"
        elif not self._may_act(account_id):
            reason = LAPSED
        else:
            since = queued_ms if job.measured_ms is None else min(job.measured_ms, queued_ms)
            age_ms = job.data_age_ms + self._clock.now_ms() - since
            if self._max_data_age_ms is not None and age_ms > self._max_data_age_ms:
                # Never act on stale data: the guard re-decides on fresh data.
                reason = (f"not sent: its data is {age_ms} ms old, above the "
                          f"{self._max_data_age_ms} ms limit")  # fmt: skip
        if reason is not None:
            await self._not_sent(job, action_id, reason)
            return
        await self._execute(job, action_id)

    async def _not_sent(self, job: Job, action_id: str, reason: str) -> None:
        """The action is over without a call: recorded ``FAILED`` with ``reason``."""
        intent = job.intent
        await self._audit.record_event(action_id, intent.account_id, EventKind.FAILED,
                                       message=reason)
        log.warning("%s %s on %s %s", intent.kind, intent.amount, intent.symbol, reason)

    async def _execute(self, job: Job, action_id: str) -> None:
        intent = job.intent
        exchange = self._exchanges[intent.account_id]
        if job.dry_run:
            log.info("dry-run %s %s %s on %s: not sent", intent.policy, intent.kind,
                     intent.amount, intent.symbol)
            await self._audit.record_event(action_id, intent.account_id, EventKind.DRY_RUN,
                                           message="dry-run: not sent")
            return
        await self._audit.record_event(action_id, intent.account_id, EventKind.SENT)
        if not self._may_act(intent.account_id):
            # The SENT record took past the ownership lease (a slow disk, a stopped
            # process): a peer may own the account by now. Nothing has left yet.
            await self._not_sent(job, action_id, LAPSED)
            return
        self.settlement.sent(action_id, job.key, intent.kind, intent.amount,
                             job.position.margin, job.position.qty, self._clock.now_ms())
        self._unqueue(job.key, action_id)
        started = time.perf_counter()
        outcome = "succeeded"
        try:
            self.calls += 1
            await exchange.adjust_margin(intent.symbol, intent.kind, intent.amount)
        except RetryLater as exc:
            outcome = "retry_later"
            self.settlement.not_applied(action_id)
            await self._retry_later(job, action_id, exc, _ms_since(started))
        except Rejected as exc:
            outcome = "rejected"
            self.settlement.not_applied(action_id)
            await self._rejected(job, action_id, exc, _ms_since(started))
        except AuthError as exc:
            outcome = "failed"
            self.settlement.not_applied(action_id)
            # The key or the clock must be fixed first: not again on every mark tick, but
            # soon after it is (a clock put right must not cost the next rescue 30 s).
            hold_ms = self._hold(job, exc.code, AUTH_BACKOFF_MS, self._reject_backoff_ms)
            await self._audit.record_event(
                action_id, intent.account_id, EventKind.FAILED, code=exc.code,
                message=f"{exc} (no new action on this position for {hold_ms / 1000:g} s)",
                latency_ms=_ms_since(started))
            log.error("%s on %s failed: %s", intent.kind, intent.symbol, exc)
        except Exception as exc:
            # Uncertain, but also anything unexpected (an unparsable answer to a POST, a
            # bug below us): it may have been applied, so it is settled from evidence,
            # never retried blindly.
            outcome = "uncertain"
            if not isinstance(exc, ExchangeError):
                log.exception("unexpected error sending %s on %s", intent.kind, intent.symbol)
            await self._uncertain(job, action_id, str(exc) or type(exc).__name__,
                                  _ms_since(started))
        else:
            await self._succeeded(job, action_id, _ms_since(started))
        finally:
            metrics.ACTIONS.labels(account=metrics.account_label(intent.account_id),
                                   policy=intent.policy, kind=intent.kind.value,
                                   outcome=outcome).inc()

    async def _succeeded(self, job: Job, action_id: str, latency: int) -> None:
        intent = job.intent
        for rejection in [r for r in self._rejections if r[0] == job.key]:
            del self._rejections[rejection]
        settled = self.settlement.succeeded(action_id, self._clock.now_ms())
        try:
            await self._audit.record_event(action_id, intent.account_id, EventKind.SUCCEEDED,
                                           latency_ms=latency)
        except AuditError as exc:
            # The outcome is reconciled at the next start-up (the action is unfinished).
            log.error("%s on %s succeeded but was not recorded: %s", intent.kind,
                      intent.symbol, exc)
        log.info("%s %s USDC on %s by %s: done in %d ms", intent.kind, intent.amount,
                 intent.symbol, intent.policy, latency)
        metrics.MARGIN_MOVED.labels(account=metrics.account_label(intent.account_id),
                                    kind=intent.kind.value).inc(float(intent.amount))
        self._notify(Alert(AlertKind.ACTION_TAKEN, intent.account_id, intent.symbol,
                           f"{intent.kind} {intent.amount} USDC by {intent.policy}",
                           {"amount": intent.amount, "reason": intent.reason}))
        await self._record(settled)

    async def _rejected(self, job: Job, action_id: str, exc: Rejected, latency: int) -> None:
        intent = job.intent
        # The same intent would be rejected again on the next mark: hold the position back,
        # longer each time the exchange gives the same reason.
        # Held before anything is awaited: no evaluation may slip the same call in meanwhile.
        hold_ms = self._hold(job, exc.code, self._reject_backoff_ms,
                             self._reject_backoff_max_ms)
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

    def _hold(self, job: Job, code: int | None, base_ms: int, cap_ms: int) -> int:
        """Hold the job's kind of action on its position back after a refusal with
        ``code``: ``base_ms``, doubled on every repeat of the same code since its last
        success, up to ``cap_ms``. The other kind stays free: a sweep the exchange refused
        must not stand in the way of a rescue."""
        key = job.key
        counted = (key, job.intent.kind, code)
        repeats = self._rejections.get(counted, 0)
        self._rejections[counted] = repeats + 1
        hold_ms = int(backoff.delay(repeats, base_ms, cap_ms))
        self._held[(key, job.intent.kind)] = self._clock.monotonic() + hold_ms / 1000
        return hold_ms

    def _unqueue(self, key: PositionKey, action_id: str) -> None:
        """The queued action ``action_id`` left the queue; a newer one keeps its mark."""
        if self._queued.get(key) == action_id:
            del self._queued[key]

    async def _uncertain(self, job: Job, action_id: str, message: str, latency: int) -> None:
        account_id = job.intent.account_id
        settled, reads = self.settlement.uncertain(action_id, self._clock.now_ms())
        await self._audit.record_event(action_id, account_id, EventKind.UNCERTAIN,
                                       message=message, latency_ms=latency)
        self._notify(Alert(AlertKind.UNCERTAIN, account_id, job.intent.symbol,
                           f"{job.intent.kind} {job.intent.amount}: outcome unknown, "
                           "re-reading the position", {"amount": job.intent.amount}))
        await self._record(settled)
        self._read_later(job.key, action_id, reads)

    def _settled_later(self, settled: list[Settled]) -> None:
        """Record outcomes settled outside an awaitable path (adopting at start-up)."""
        if settled:
            key = settled[0].call.key
            self._wait(key, settled[0].call.action_id, self._record(settled))

    def _read_later(self, key: PositionKey, action_id: str, reads: list[Read]) -> None:
        for read in reads:
            self._wait(key, action_id, self._read(read))

    async def _read(self, read: Read) -> None:
        """Read the position at ``read.at_ms`` for evidence, while it has unsettled calls."""
        if (wait_ms := read.at_ms - self._clock.now_ms()) > 0:
            await self._clock.sleep(wait_ms / 1000)
        key = read.key
        exchange = self._exchanges[key[0]]
        for delay in self._reread_delays_s:
            await self._clock.sleep(delay)
            if not self.settlement.unsettled(key):
                return  # a snapshot settled it meanwhile
            try:
                position = await exchange.get_position(key[1], key[2], urgent=True)
            except ExchangeError as exc:
                log.warning("re-read of %s failed: %s", key, exc)
                continue
            await self._reread(position, key)
            return
        # Still unknown: the next snapshot (poll or push) brings the evidence.
        log.error("could not re-read %s %s to settle its margin calls", key[0], key[1])

    async def _reread(self, position: Position | None, key: PositionKey) -> None:
        if self._on_reread is not None:
            await self._on_reread(position, key)
        elif position is None:
            await self.closed(key)
        else:
            await self.observe(position)

    async def _record(self, settled: list[Settled]) -> None:
        for outcome in settled:
            call = outcome.call
            await self._audit.record_event(call.action_id, call.key[0],
                                           EventKind(outcome.event), message=outcome.message,
                                           detail=outcome.detail())
            log.info("%s %s on %s: %s %s", call.kind, call.amount, call.key[1],
                     outcome.event, outcome.message,
                     extra={"action_id": call.action_id, "account": call.key[0],
                            "symbol": call.key[1]})

    async def _retry_later(
        self, job: Job, action_id: str, exc: RetryLater, latency: int
    ) -> None:
        wait_s = exc.retry_after_s if isinstance(exc, RateLimited) else 1.0
        self._held[(job.key, job.intent.kind)] = self._clock.monotonic() + wait_s
        await self._audit.record_event(
            action_id, job.intent.account_id, EventKind.FAILED,
            code=-1003 if isinstance(exc, RateLimited) else None,
            message=f"not applied, will re-decide: {exc}", latency_ms=latency)
        self._wait(job.key, action_id, self._back_off(job))

    async def _back_off(self, job: Job) -> None:
        hold = (job.key, job.intent.kind)
        until = self._held.get(hold, 0.0)
        if (wait_s := until - self._clock.monotonic()) > 0:
            await self._clock.sleep(wait_s)
        if self._held.get(hold) == until:  # not a newer hold set meanwhile
            del self._held[hold]
        try:
            position = await self._exchanges[job.intent.account_id].get_position(
                job.intent.symbol, job.key[2], urgent=job.intent.kind is ActionKind.ADD)
        except ExchangeError as exc:
            log.warning("re-read of %s failed: %s", job.key, exc)
            return
        await self._reread(position, job.key)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
