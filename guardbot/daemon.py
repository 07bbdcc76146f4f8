"""``guardbot run``: the wiring and the lifecycle of the guard.

    config -> exchanges -> feeds (poller, streams) -> PositionBook -> policies -> arbiter
           -> executor -> audit log

Everything long-lived is owned by one task group (style.md §10); SIGINT/SIGTERM set the stop
event and the group unwinds. Start-up and crash recovery are the same path: open the audit
log (refusing an out-of-date schema), poll every account, reconcile the actions a previous
run left unfinished, then start guarding. Budgets come from the audit log, so a restart
never resets them (design.md, invariants).

``Guard`` is wiring around one loop: whenever the data about an account changes, evaluate
its fresh isolated positions, let the arbiter decide, and hand approved actions to the
executor. It never acts on data older than ``poll.max_data_age_s``, never on a CROSS
position (the book only hands out isolated ones), and only on accounts this instance owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from guardbot import __version__, metrics
from guardbot.alerts import Alert, Alerter, AlertKind
from guardbot.arbiter import Arbiter, ArbiterState, Decision, LastAction, Refusal
from guardbot.audit import chain
from guardbot.audit.store import (
    NOT_APPLIED,
    AuditError,
    AuditLog,
    EventKind,
    SchemaOutOfDate,
)
from guardbot.audit.tables import Action, ActionEvent, Observation
from guardbot.book import PositionBook
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.config import ConfigError, Settings
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Intent,
    MarkPrice,
    Position,
    PositionKey,
    SymbolRules,
)
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    MalformedResponse,
    Rejected,
    RetryLater,
    Unreachable,
)
from guardbot.exchange.port import (
    Exchange,
    HoldingsPushed,
    MarksPushed,
    PositionsPushed,
    StreamEvent,
)
from guardbot.executor import REJECT_BACKOFF_MS, Executor, Job
from guardbot.feeds.poller import Poller
from guardbot.feeds.streams import Streams
from guardbot.health import AccountReadiness, HealthServer, Readiness
from guardbot.logs import register_secret
from guardbot.ownership import AccountOwnership, OwnershipError
from guardbot.policies.base import PolicyContext, PositionView
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.loader import load_policies as _load_policies
from guardbot.policies.runner import evaluate_policies
from guardbot.settlement import Settlement

log = logging.getLogger(__name__)

# How often symbol rules (margin parameters, listings) are re-read, in seconds.
RULES_REFRESH_S = 600
# How long start-up keeps retrying an exchange that answers with transient failures.
STARTUP_PATIENCE_S = 60.0
# Recent marks kept per symbol for policies that look at volatility.
RECENT_MARKS = 120
# A failing policy or a refused decision is audited once per this many ms per position, not
# on every mark tick.
REPEAT_AUDIT_MS = 60_000
# A position is "near its trigger" (polled fast) within this factor of the smallest trigger.
URGENT_FACTOR = Decimal(2)
DEFAULT_TRIGGER = Decimal("0.05")
class StartupError(Exception):
    """The guard cannot start; the message says what the operator must do."""


def load_policies(settings: Settings) -> list[LoadedPolicy]:
    """The configured policies, validated (``ConfigError`` naming the key otherwise)."""
    return _load_policies(settings.policies, settings.guard.strategies_dir)


def describe_settings(settings: Settings) -> str:
    """A human summary of what would be guarded, without secrets."""
    lines = [
        f"exchange: {settings.exchange.preset} ({settings.exchange.urls()['rest_url']})",
        f"audit: {settings.audit.url.split('@')[-1]}",
        f"dry-run: {'yes' if settings.guard.dry_run else 'no'}",
        f"accounts: {', '.join(a.name for a in settings.accounts) or 'none'}",
        "policies: " + (", ".join(p.label for p in settings.policies) or "topup (default)"),
    ]
    return "\n".join(lines)


def config_hash(settings: Settings) -> str:
    """A fingerprint of the configuration for the ``runs`` table (secrets are redacted by
    ``SecretStr`` in the dump, so the hash cannot leak them)."""
    return hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]


def utc_day_start_ms(at_ms: int) -> int:
    """Midnight UTC of the day ``at_ms`` falls in: daily budgets count from here."""
    day = datetime.fromtimestamp(at_ms / 1000, UTC).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    return int(day.timestamp() * 1000)


class Guard:
    """The guard over already-open exchanges and audit log (``run_daemon`` opens them)."""

    def __init__(
        self,
        settings: Settings,
        exchanges: Mapping[str, Exchange],
        audit: AuditLog,
        policies: Sequence[LoadedPolicy],
        *,
        account_names: Mapping[str, str] | None = None,
        owned: frozenset[str] | None = None,
        notify: Callable[[Alert], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        public_stream: bool = True,
    ) -> None:
        self.settings = settings
        self.exchanges = dict(exchanges)
        self.audit = audit
        self.policies = list(policies)
        self.account_names = dict(account_names or {})
        # Accounts this instance guards (AccountOwnership decides with several instances).
        self.owned = frozenset(self.exchanges) if owned is None else owned
        self.notify = notify or (lambda _alert: None)
        self._last_snapshot_ms: dict[str, int] = {}
        # Margin the guard added minus margin it swept, per position (audit log, then kept
        # current here); policies see it as ctx.net_added / ctx.original_margin.
        self._net_added: dict[PositionKey, Decimal] = {}
        self.clock = clock
        self.book = PositionBook()
        self.arbiter = Arbiter(settings.budgets, dry_run=settings.guard.dry_run)
        self._max_age_ms = int(settings.poll.max_data_age_s * 1000)
        # A call whose answer we gave up on may land until the client's longest timeout
        # (plus slack) has passed.
        self._read_timeout_ms = int(
            max(settings.exchange.timeout_s, settings.exchange.margin_timeout_s) * 1000) + 1000
        self.executor = Executor(
            self.exchanges, audit, clock=clock,
            settlement=Settlement(settle_window_ms=self._read_timeout_ms),
            on_reread=self._on_reread, notify=self.notify, on_applied=self._applied,
            max_data_age_ms=self._max_age_ms,
            reject_backoff_ms=max(int(settings.budgets.cooldown_s * 1000), REJECT_BACKOFF_MS))
        self.poller = Poller(
            self.exchanges,
            self.on_snapshot,
            interval_s=settings.poll.interval_s,
            fast_interval_s=settings.poll.fast_interval_s,
            is_urgent=self.is_urgent,
        )
        self.rules: dict[str, SymbolRules] = {}
        self.free_balance: dict[str, Decimal] = {}
        self.marks: dict[str, deque[MarkPrice]] = {}
        self.ws_connected: dict[str, bool] = dict.fromkeys(self.exchanges, False)
        self._public_stream = public_stream
        self._locks = {account_id: asyncio.Lock() for account_id in self.exchanges}
        # Taking and giving away accounts never interleave (a take-over's reconcile must not
        # re-add an account given away meanwhile).
        self._ownership_lock = asyncio.Lock()
        self._urgent: set[str] = set()
        self._acting = False  # only between start-up reconcile and stop
        # Last applied action per position, for cooldowns (seeded from the audit log).
        self._last_action: dict[PositionKey, LastAction | None] = {}
        self._said: dict[tuple[str, ...], int] = {}
        self._balance_ms: dict[str, int] = {}  # when each free balance was read
        self._watch = URGENT_FACTOR * _smallest_trigger(self.policies)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Load symbol rules, take a first snapshot of every account and reconcile what a
        previous run left unfinished. The same path after a crash and a clean stop."""
        await self._load_rules_patiently()
        # Settle the past before deciding anything new, so no new action is mistaken for
        # an unfinished one.
        await self.reconcile_unfinished(self.owned)
        for account_id in self.exchanges:
            snapshot = await self.poller.poll_now(account_id)
            if snapshot is None:
                log.warning("no first snapshot of %s; the poller keeps trying", account_id)
        self._acting = True
        for account_id in self.exchanges:
            await self.evaluate(account_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Guard until ``stop`` is set (or a part fails)."""
        await self.start()
        async with self.poller, asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.executor.run(), name="executor")]
            for index, exchange in enumerate(self.exchanges.values()):
                streams = Streams(
                    exchange, self.on_event, self.poller.poll_now,
                    public=self._public_stream and index == 0,
                )
                tasks.append(group.create_task(streams.run(), name=f"streams-{index}"))
            tasks.append(group.create_task(self._housekeeping(), name="housekeeping"))
            await stop.wait()
            log.info("stopping the guard")
            self._acting = False
            await self.executor.drain()
            for task in tasks:
                task.cancel()

    async def _load_rules_patiently(self) -> None:
        """The first symbol rules, retrying transient failures (lost answers, 5xx, 429,
        maintenance) for up to ``STARTUP_PATIENCE_S``: a flaky exchange must not stop a
        daemon that is about to guard positions. An exchange that cannot be connected to at
        all (a wrong URL, no network), bad keys and other errors stop start-up at once, with
        the reason (the service manager restarts it)."""
        deadline = time.monotonic() + STARTUP_PATIENCE_S
        delay = 0.5
        while True:
            try:
                await self.refresh_rules()
                return
            except RetryLater as exc:
                if isinstance(exc, Unreachable) or time.monotonic() + delay > deadline:
                    raise
                log.warning("start-up: symbol rules not loaded (%s); retrying in %.1f s",
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)

    async def refresh_rules(self) -> None:
        """Load every symbol's margin parameters (``GET /v1/public/info``)."""
        first = next(iter(self.exchanges.values()))
        self.rules = await first.get_symbol_rules()

    async def follow(self, current: Callable[[], frozenset[str]]) -> None:
        """Follow ``AccountOwnership`` to the set ``current()`` returns, read under the
        ownership lock so a target that changed while we waited is never applied stale.
        Stop acting on accounts given away at once, and stop the executor's work on them
        (queued actions are recorded as not sent, calls on the wire and reconciles finish)
        before returning; hand a newly taken account's unfinished actions (its last guard
        may have died mid-call) to the executor to reconcile before acting on it."""
        async with self._ownership_lock:
            owned = current()
            gained = owned - self.owned
            await self._release(self.owned - owned)
            if gained:
                await self.reconcile_unfinished(gained)
                self.owned = self.owned | gained
                for account_id in gained:
                    await self.evaluate(account_id)
        log.info("guarding %d of %d accounts", len(self.owned), len(self.exchanges))

    async def release(self, accounts: frozenset[str]) -> None:
        """Stop acting on ``accounts`` and finish the executor's work on them."""
        async with self._ownership_lock:
            await self._release(accounts)

    async def _release(self, accounts: frozenset[str]) -> None:
        self.owned = self.owned - accounts
        await asyncio.gather(*(self._release_account(account_id) for account_id in accounts))
        # A peer acts on them now: if they come back, cooldowns and net margin added are
        # read again from the audit log (which the take-over reloads), not from our memory.
        for cache in (self._last_action, self._net_added):
            for key in [k for k in cache if k[0] in accounts]:
                del cache[key]

    async def _release_account(self, account_id: str) -> None:
        async with self._locks[account_id]:  # an evaluation of it may be deciding right now
            await self.executor.release(account_id)

    def readiness(self) -> Readiness:
        """What ``/readyz`` reports: per owned account, how old its data is."""
        now = self.clock.now_ms()
        accounts = []
        for account_id in sorted(self.owned):
            ages = [self.book.age_ms(p.key, now) or 0
                    for p in self.book.isolated_positions(account_id)]
            last = self._last_snapshot_ms.get(account_id)
            since_poll = None if last is None else (now - last) / 1000
            accounts.append(AccountReadiness(
                account=self.account_names.get(account_id, account_id),
                data_age_s=max(ages) / 1000 if ages else since_poll,
                max_data_age_s=self.settings.poll.max_data_age_s,
                ws_connected=self.ws_connected.get(account_id, False),
                polling_covering=since_poll is not None
                and since_poll <= self.settings.poll.max_data_age_s,
            ))
        return Readiness(database_reachable=self.audit.database_ok, accounts=tuple(accounts),
                         spool_depth=self.audit.spool_depth)

    async def reconcile_unfinished(self, accounts: Iterable[str]) -> None:
        """Settle actions with no known outcome (a crash between intent and outcome). Never
        sent: recorded as such. Sent: handed to the executor, which keeps the position busy
        until a read received a full read timeout from now (the dead process's call may
        still be landing) says whether it was applied, as for its own uncertain calls."""
        unfinished = await self.audit.unfinished_actions(accounts)
        now = self.clock.now_ms()
        for action in unfinished:
            record = action.record
            if record.account_id not in self.exchanges:
                continue
            if action.last_event is EventKind.INTENT:
                # Recorded, never sent: nothing can have happened.
                await self.audit.record_event(
                    action.action_id, record.account_id, EventKind.FAILED,
                    message="not sent before the previous run stopped")
                continue
            log.info("reconciling unfinished action %s on %s %s", action.action_id,
                     record.account_id, record.symbol)
            self.executor.adopt(action.action_id, record, now)

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                await self.executor.expire()
            except AuditError as exc:
                log.error("could not record expired verifications: %s", exc)
            if ticks % RULES_REFRESH_S == 0:
                # New listings and changed margin parameters, without a restart.
                try:
                    await self.refresh_rules()
                except ExchangeError as exc:
                    log.warning("could not refresh symbol rules: %s", exc)
            now = self.clock.now_ms()
            for account_id in self.exchanges:
                ages = [self.book.age_ms(p.key, now) or 0
                        for p in self.book.isolated_positions(account_id)]
                metrics.DATA_AGE.labels(account=account_id).set(max(ages, default=0) / 1000)

    # -- inputs -------------------------------------------------------------------------

    async def on_snapshot(self, snapshot: AccountSnapshot) -> None:
        """A REST snapshot of one account (poller, resync)."""
        account_id = snapshot.account_id
        self._last_snapshot_ms[account_id] = snapshot.received_ms
        self.free_balance[account_id] = snapshot.free_collateral
        self._balance_ms[account_id] = snapshot.received_ms
        before = {p.key for p in self.book.isolated_positions(account_id)}
        # Only what the book took: a version older than one it holds proves nothing.
        for position in self.book.apply_snapshot(snapshot):
            await self.executor.observe(position)
        after = {p.key for p in self.book.isolated_positions(account_id)}
        for key in before - after:
            await self._closed(key)
        await self.evaluate(account_id)

    async def on_event(self, account_id: str, event: StreamEvent) -> None:
        """A WebSocket push (streams). An audit failure while handling it (recording a
        verification, say) is logged and the push dropped: it must not stop the streams
        and with them every account's guard. Nothing is sent without a recorded intent."""
        try:
            await self._on_event(account_id, event)
        except AuditError as exc:
            log.error("push for %s not fully handled: %s", account_id, exc)

    async def _on_event(self, account_id: str, event: StreamEvent) -> None:
        if isinstance(event, PositionsPushed):
            self.ws_connected[account_id] = True
            for position in event.positions:
                was_open = self.book.get(position.key) is not None
                if not self.book.apply(position):
                    continue
                await self.executor.observe(position)
                if was_open and not position.is_open:
                    await self._closed(position.key)
            await self.evaluate(account_id)
        elif isinstance(event, MarksPushed):
            symbols = set()
            for mark in event.marks:
                self.marks.setdefault(mark.symbol, deque(maxlen=RECENT_MARKS)).append(mark)
                if self.book.apply_mark(mark.symbol, mark.price, mark.exchange_ms):
                    symbols.add(mark.symbol)
            if symbols:
                accounts = {p.account_id for p in self.book.positions() if p.symbol in symbols}
                await asyncio.gather(*(self.evaluate(a) for a in accounts))
        elif isinstance(event, HoldingsPushed):
            self.ws_connected[account_id] = True
        else:  # StreamGap: the streams already resynchronised over REST
            self.ws_connected[account_id] = False

    async def _on_reread(self, position: Position | None, key: PositionKey) -> None:
        if position is not None and self.book.apply(position):
            await self.executor.observe(position)
        await self.evaluate(key[0])

    async def _closed(self, key: PositionKey) -> None:
        """An isolated position left the book: closed by its owner or liquidated."""
        # A new position on the symbol starts with nothing of this one: no cooldown, no
        # hold-back, no unsettled call, no net margin added.
        await self.executor.closed(key)
        self._net_added[key] = Decimal(0)
        self._last_action[key] = None
        await self.audit.record_observation(key[0], key[1], "position_closed",
                                            {"margin_mode": key[2].value})
        self.notify(Alert(AlertKind.LIQUIDATION, self.account_names.get(key[0], key[0]), key[1],
                          "isolated position closed or liquidated"))
        log.warning("isolated position %s %s is gone (closed or liquidated)", key[0], key[1])

    # -- deciding -----------------------------------------------------------------------

    def is_urgent(self, account_id: str) -> bool:
        """Whether the account has a position near its trigger (polled on the fast interval)."""
        return account_id in self._urgent

    async def evaluate(self, account_id: str) -> None:
        """Evaluate the account's fresh isolated positions and act on the decisions."""
        if not self._acting or account_id not in self.owned:
            return
        async with self._locks[account_id]:
            try:
                await self._evaluate(account_id)
            except (AuditError, ExchangeError) as exc:
                # One failed round must not stop the guard: the next update tries again.
                log.error("evaluation of %s failed: %s", account_id, exc)

    async def _evaluate(self, account_id: str) -> None:
        now = self.clock.now_ms()
        blocked = self.executor.blocked()
        views: dict[PositionKey, PositionView] = {}
        intents: list[Intent] = []
        urgent = False
        for position in self.book.isolated_positions(account_id):
            try:
                view, found = await self._evaluate_position(position, blocked, now)
            except (AuditError, ExchangeError):
                raise  # the whole round: nothing of this account can be trusted now
            except Exception as exc:
                # One bad position (a mark of 0, a bug) must never leave the others
                # unguarded: it is skipped this round and reported.
                await self._position_failed(position, exc, now)
                continue
            if view is None:
                continue
            if view.distance is not None and view.distance < self._watch:
                urgent = True
            if found:
                views[position.key] = view
                intents.extend(found)
        if urgent:
            self._urgent.add(account_id)
        else:
            self._urgent.discard(account_id)
        if not intents:
            return
        state, unknown = await self._arbiter_state(account_id, now, blocked)
        for intent in [i for i in intents if i.key in unknown and i.kind is ActionKind.REDUCE]:
            # Its last action cannot be read: a sweep could undo a recent top-up. ADDs go on,
            # within the budgets, which the ledger knows.
            self._say_once(("unknown", *intent.key), now,
                           "%s %s: last action unknown (audit database down), no REDUCE",
                           intent.account_id, intent.symbol)
            intents.remove(intent)
        decisions = self.arbiter.decide(intents, state)
        await asyncio.gather(*(self._act(d, views, now) for d in decisions))

    async def _evaluate_position(
        self, position: Position, blocked: frozenset[PositionKey], now: int
    ) -> tuple[PositionView | None, list[Intent]]:
        """The position's view (``None``: not guarded now) and its policies' intents (none
        while it is blocked or its data is stale or not yet fresh enough)."""
        account_id = position.account_id
        rules = self.rules.get(position.symbol)
        age = self.book.age_ms(position.key, now)
        if rules is None or age is None:
            self._say_once(("no rules", position.symbol), now,
                           "no symbol rules for %s: not guarded", position.symbol)
            return None, []
        settlement = self.executor.settlement
        known = settlement.known_effect(position.key)
        if known:
            # Calls the exchange confirmed that no snapshot shows yet: deciding on the
            # snapshot's margin alone would add what is already there.
            position = replace(position, margin=position.margin + known)
        view = PositionView.of(position, rules, age)
        if position.key in blocked:
            return view, []
        evidence_after = settlement.evidence_after(position.key)
        if evidence_after is not None and now - age <= evidence_after:
            # A call's answer was lost: only data the exchange confirmed since can show it
            # did not land yet. The executor reads it at once; decide on that.
            return view, []
        if age > self._max_age_ms:
            # Never act on stale data (design.md): wait for the poller to refresh it.
            if self._say_once(("stale", *position.key), now,
                              "%s %s: data %d ms old, not acting", account_id,
                              position.symbol, age):
                self.notify(Alert(AlertKind.DATA_STALE,
                                  self.account_names.get(account_id, account_id),
                                  position.symbol, f"data {age / 1000:.1f} s old: not acting"))
            return view, []
        if position.key not in self._net_added:
            try:
                self._net_added[position.key] = await asyncio.to_thread(
                    net_added_from_audit, self.audit.engine, position.key)
            except SQLAlchemyError as exc:
                # The database may be down (records wait in the spool): guard anyway;
                # policies see no history until it can be read.
                log.warning("cannot read %s history from the audit log: %s",
                            position.symbol, str(exc).splitlines()[0])
        evaluation = evaluate_policies(
            self.policies, view, self._context(position, now),
            self.account_names.get(account_id))
        for failure in evaluation.failures:
            await self._policy_failed(failure.policy, position, failure.error, now)
        return view, list(evaluation.intents)

    async def _position_failed(self, position: Position, exc: Exception, now: int) -> None:
        metrics.EVALUATION_FAILURES.labels(account=position.account_id).inc()
        error = f"{type(exc).__name__}: {exc}"
        if self._say_once(("failed", *position.key), now,
                          "evaluating %s %s failed, skipped: %s", position.account_id,
                          position.symbol, error):
            log.debug("evaluation failure", exc_info=exc)
            with contextlib.suppress(AuditError):
                await self.audit.record_observation(
                    position.account_id, position.symbol, "evaluation_failed",
                    {"error": error[:500]})

    def _context(self, position: Position, now: int) -> PolicyContext:
        net_added = self._net_added.get(position.key)
        return PolicyContext(
            now_ms=now,
            free_balance=self.free_balance.get(position.account_id),
            recent_marks=tuple(self.marks.get(position.symbol, ())),
            original_margin=None if net_added is None else position.margin - net_added,
            net_added=net_added or Decimal(0),
        )

    def _applied(self, key: PositionKey, kind: ActionKind, amount: Decimal) -> None:
        """The executor saw a call applied (succeeded, or reconciled as applied)."""
        self._last_action[key] = LastAction(self.clock.now_ms(), kind)
        if key in self._net_added:
            self._net_added[key] += amount if kind is ActionKind.ADD else -amount

    async def _arbiter_state(
        self, account_id: str, now: int, blocked: frozenset[PositionKey]
    ) -> tuple[ArbiterState, frozenset[PositionKey]]:
        """What the arbiter needs, and the positions whose last action is unknown (first
        seen while the audit database cannot be read): no cooldown is known for them."""
        day = utc_day_start_ms(now)
        keys = [p.key for p in self.book.isolated_positions(account_id)]
        added_by_position = {}
        last_action = {}
        unknown = set()
        for key in keys:
            added_by_position[key] = await self.audit.added_since(account_id, day, symbol=key[1])
            if key not in self._last_action:
                # First sight in this run: the audit log knows the last action that may
                # have moved money. From then on only applied actions count: a failed call
                # must not delay the retry of a position at risk.
                since = now - int(self.settings.budgets.cooldown_s * 1000)
                try:
                    self._last_action[key] = await asyncio.to_thread(
                        last_moved_from_audit, self.audit.engine, key, since,
                        self.settings.guard.dry_run)
                except SQLAlchemyError:
                    unknown.add(key)
                    continue
            last = self._last_action[key]
            if last is not None:
                last_action[key] = last
        added_today = await self.audit.added_since(account_id, day)
        metrics.BUDGET_LEFT.labels(account=account_id).set(
            float(max(self.settings.budgets.per_account_per_day - added_today, Decimal(0))))
        kill_switch = self.settings.guard.kill_switch_file
        balance = self.free_balance.get(account_id)
        if balance is not None:
            # The balance is only re-read on polls: ADDs decided since (or in flight when
            # it was read) are not in it yet, and must not spend the reserve twice.
            balance -= await self.audit.added_since(
                account_id, self._balance_ms[account_id] - self._read_timeout_ms)
        return ArbiterState(
            now_ms=now,
            free_balance={} if balance is None else {account_id: balance},
            blocked=blocked,
            unsettled={key: n for key in keys if (n := self.executor.settlement.unsettled(key))},
            last_action=last_action,
            added_today_by_position=added_by_position,
            added_today_by_account={account_id: added_today},
            kill_switch=kill_switch is not None and kill_switch.exists(),
        ), frozenset(unknown)

    async def _act(
        self, decision: Decision, views: Mapping[PositionKey, PositionView], now: int
    ) -> None:
        intent = decision.intent
        view = views[intent.key]
        if decision.approved:
            intent = replace(intent, amount=decision.amount)
        job = Job(intent, view.position, data_age_ms=view.age_ms,
                  liquidation_price=view.liquidation_price, distance=view.distance,
                  dry_run=decision.dry_run, measured_ms=now)
        if decision.approved:
            submitted = await self.executor.submit(job)
            if submitted is not None and job.dry_run:
                # Nothing will be applied; pace dry-run decisions as if it had been.
                self._last_action[intent.key] = LastAction(now, intent.kind)
            return
        # Refusals are audited as SKIPPED actions, once a minute per position and reason;
        # routine ones (cooldown, ranking) are not, or they would restart the cooldown.
        refusal = decision.refusal
        if refusal is None or refusal.routine:
            return
        if not self._say_once(("refused", *intent.key, refusal.value), now,
                              "%s %s %s refused: %s", intent.kind, intent.amount,
                              intent.symbol, decision.reason):
            return
        action_id = await self.audit.record_action(job.record())
        await self.audit.record_event(action_id, intent.account_id, EventKind.SKIPPED,
                                      message=decision.reason)
        if refusal is Refusal.BUDGET:
            self.notify(Alert(AlertKind.BUDGET_EXHAUSTED,
                              self.account_names.get(intent.account_id, intent.account_id),
                              intent.symbol, f"{intent.kind} refused: {decision.reason}",
                              {"amount": intent.amount, "reason": intent.reason}))

    async def _policy_failed(self, policy: str, position: Position, error: str, now: int) -> None:
        if self._say_once(("policy", policy, *position.key), now,
                          "policy %s failed on %s %s: %s", policy, position.account_id,
                          position.symbol, error):
            await self.audit.record_observation(
                position.account_id, position.symbol, "policy_failed",
                {"policy": policy, "error": error[:500]})

    def _say_once(self, what: tuple[str, ...], now: int, message: str, *args: object) -> bool:
        """Log ``message`` unless the same thing was said within ``REPEAT_AUDIT_MS``."""
        last = self._said.get(what)
        if last is not None and now - last < REPEAT_AUDIT_MS:
            return False
        self._said[what] = now
        log.warning(message, *args)
        return True


def _closed_since(key: PositionKey) -> Any:
    """When the guard last saw this position closed (``NULL``: never): a position opened
    since is a new one, and nothing before counts for it."""
    account_id, symbol, _ = key
    return (
        select(func.max(Observation.time))
        .where(Observation.account_id == account_id, Observation.symbol == symbol,
               Observation.kind == "position_closed")
        .scalar_subquery()
    )


def net_added_from_audit(engine: Engine, key: PositionKey) -> Decimal:
    """Margin the guard added minus margin it swept on this position (applied, not dry-run)
    since the guard last saw it closed: a reopened position starts from zero."""
    account_id, symbol, mode = key
    closed = _closed_since(key)
    query = (
        select(Action.id, Action.kind, Action.amount, ActionEvent.kind.label("event"),
               ActionEvent.detail)
        .join(ActionEvent, ActionEvent.action_id == Action.id)
        .where(Action.account_id == account_id, Action.symbol == symbol,
               Action.margin_mode == mode.value, Action.dry_run.is_(False),
               ActionEvent.kind.in_(["SUCCEEDED", "RECONCILED"]),
               or_(closed.is_(None), Action.time > closed))
    )
    moved: dict[str, Decimal] = {}
    with engine.connect() as connection:
        for row in connection.execute(query):
            if row.event == "SUCCEEDED" or (row.detail or {}).get("applied") == "true":
                moved[row.id] = row.amount if row.kind == "ADD" else -row.amount
    return sum(moved.values(), Decimal(0))


def last_moved_from_audit(
    engine: Engine, key: PositionKey, since_ms: int, dry_run: bool
) -> LastAction | None:
    """The newest action on this position since ``since_ms`` that may have moved money
    (not rejected, skipped, failed or reconciled as not applied; dry-run ones only when
    ``dry_run``, for pacing), and since the position was last seen closed (a new position
    inherits no cooldown): what a cooldown counts from after a restart."""
    account_id, symbol, mode = key
    closed = _closed_since(key)
    query = (
        select(Action.id, Action.time, Action.kind, ActionEvent.kind.label("event"),
               ActionEvent.detail)
        .outerjoin(ActionEvent, ActionEvent.action_id == Action.id)
        .where(Action.account_id == account_id, Action.symbol == symbol,
               Action.margin_mode == mode.value, Action.dry_run.is_(dry_run),
               Action.time >= chain.from_ms(since_ms),
               or_(closed.is_(None), Action.time > closed))
    )
    moved: dict[str, LastAction] = {}
    refuted: set[str] = set()
    with engine.connect() as connection:
        for row in connection.execute(query):
            moved[row.id] = LastAction(chain.to_ms(row.time), ActionKind(row.kind))
            not_applied = row.event in NOT_APPLIED - {EventKind.DRY_RUN} or (
                row.event == EventKind.RECONCILED
                and (row.detail or {}).get("applied") == "false")
            if not_applied:
                refuted.add(row.id)
    found = [last for action_id, last in moved.items() if action_id not in refuted]
    return max(found, key=lambda last: last.at_ms, default=None)


def _exchange_failure(error: BaseException, url: str) -> str:
    """What went wrong with the exchange, in the operator's terms."""
    if isinstance(error, MalformedResponse):
        return (f"the exchange at {url} sent an answer guardbot cannot read ({error}): check "
                "that exchange.rest_url points at Orderly's REST API")
    if isinstance(error, Rejected):
        return f"the exchange at {url} refused a request guardbot needs: {error}"
    if isinstance(error, RetryLater):
        return f"cannot reach the exchange at {url}: {error}"
    return f"the exchange at {url} failed ({type(error).__name__}): {error}"


def _smallest_trigger(policies: Sequence[LoadedPolicy]) -> Decimal:
    triggers = [
        trigger
        for loaded in policies
        if isinstance(trigger := getattr(loaded.policy, "trigger", None), Decimal)
    ]
    return min(triggers, default=DEFAULT_TRIGGER)


async def run_daemon(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    exchange_factory: Callable[..., Exchange] | None = None,
    ownership_interval_s: float = 2.0,
) -> None:
    """Open everything, guard until SIGINT/SIGTERM (or ``stop``), close everything.

    With PostgreSQL, accounts are shared with other live instances (``AccountOwnership``,
    ticking every ``ownership_interval_s``); an account nobody holds is taken after two
    ticks, so a lone instance starts guarding a few seconds after start-up.

    Raises ``StartupError`` with what the operator must do when it cannot start.
    """
    from guardbot.exchange.client import OrderlyExchange

    if not settings.accounts:
        raise StartupError("no [[accounts]] configured: nothing to guard")
    try:
        policies = load_policies(settings)
        for account in settings.accounts:
            register_secret(account.secret().get_secret_value())  # masked in every log line
    except ConfigError as exc:
        raise StartupError(f"invalid configuration:\n{exc}") from None
    try:
        audit = await AuditLog.open(settings.audit.url, settings.audit.spool_dir)
    except SchemaOutOfDate as exc:
        raise StartupError(
            f"the audit database schema is out of date ({exc}): run `guardbot db upgrade`"
        ) from None
    except Exception as exc:  # AuditUnavailable, SpoolInUse, bad URL: all stop start-up
        raise StartupError(f"cannot open the audit log: {exc}") from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    factory = exchange_factory or OrderlyExchange.from_settings
    exchanges: dict[str, Exchange] = {}
    instance_id = f"{socket.gethostname()}-{os.getpid()}"
    try:
        for account in settings.accounts:
            exchanges[account.account_id] = factory(account, settings.exchange)
        async with contextlib.AsyncExitStack() as stack:
            guards: list[Guard] = []

            async def release_given_away(owned: frozenset[str]) -> None:
                # AccountOwnership awaits this before it unlocks what it gave away, so our
                # queued actions, calls on the wire and reconciles on those accounts are
                # over before a peer can take them (a reconcile may wait a read timeout).
                for guard in guards:
                    # Every account not ours, not only those we think we own: a take-over's
                    # reconcile may have handed one's actions to the executor already.
                    await guard.release(frozenset(guard.exchanges) - owned)

            try:
                ownership = await stack.enter_async_context(
                    AccountOwnership(settings.audit.url, instance_id, exchanges,
                                     interval_s=ownership_interval_s,
                                     on_change=release_given_away))
            except OwnershipError as exc:
                raise StartupError(f"cannot share the accounts with other instances: {exc}"
                                   ) from None
            alerter = await stack.enter_async_context(Alerter(settings.alerts.webhooks))
            await audit.start_run(__version__, config_hash(settings), socket.gethostname())
            guard = Guard(settings, exchanges, audit, policies,
                          account_names={a.account_id: a.name for a in settings.accounts},
                          owned=ownership.owned(), notify=alerter.notify)
            guards.append(guard)
            if settings.health.enabled:
                await stack.enter_async_context(
                    HealthServer(settings.health.host, settings.health.port, guard.readiness))

            async def follow_ownership() -> None:
                while True:
                    target = ownership.owned()
                    if target == guard.owned:
                        await ownership.wait_changed()
                        continue
                    try:
                        await guard.follow(ownership.owned)
                    except Exception as exc:
                        # The taken accounts stay unguarded until their take-over works: never
                        # let this task die silently while it holds their locks.
                        log.error("cannot take over accounts yet: %s; retrying", exc,
                                  exc_info=not isinstance(exc, AuditError | ExchangeError))
                        await asyncio.sleep(1.0)

            follower = asyncio.create_task(follow_ownership(), name="ownership")
            try:
                await guard.run(stop)
            except* AuthError as group:
                raise StartupError(
                    f"the exchange refused our key: {group.exceptions[0]}; check the "
                    "account's orderly_key, secret and scopes") from None
            except* ExchangeError as group:
                raise StartupError(_exchange_failure(
                    group.exceptions[0], settings.exchange.urls()["rest_url"])) from None
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            await audit.end_run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        for exchange in exchanges.values():
            await exchange.aclose()
        await audit.aclose()
