"""The guard loop: exchange data in, margin decisions out (docs/architecture.md).

Whenever the data about an account changes (a poll, a push, a re-read, a new mark), the
guard evaluates that account's fresh isolated positions with the policies, lets the arbiter
decide over the ledger's budgets, and hands approved actions to the executor. It never acts
on data older than ``[poll] max_data_age_s``, never on a CROSS position (the book only hands
out isolated ones), and only on accounts it owns.

A mark tick visits only the positions that might act at the new mark (docs/architecture.md,
"The hot path"): once per confirmed version of a position the guard computes the band of
marks in which none of its policies can act (``acts_below``/``acts_above``,
guardbot/policies/base.py; ``guardbot.policies.quiet``), and ``guardbot.watch`` finds the
positions whose mark left it. A position with calls not settled yet is evaluated in full on
every tick (its known effect and evidence rules change without a new version), as is one
without a band (a policy that promises nothing). The accounts of a tick are decided most
endangered first. Stale data is warned about by the housekeeping (``check_stale``).

It does no I/O of its own and reads time only from its clock: the daemon drives it over
REST and WebSockets on the system clock (``guardbot.daemon``), the backtest in virtual time
against the simulated exchange's engine (``guardbot.backtest``). One decision path, two
drivers.
"""

# Size (about 480 lines, Guard about 395): one class on purpose. It is the decision path
# itself: each input (snapshot, push, re-read, close) feeds the same book, bands, settlement
# evidence and arbiter state under one per-account lock, and both drivers (the daemon and
# the backtest) call exactly these methods. The rules it applies live elsewhere (policies,
# arbiter, ledger, settlement, executor); what stays here is their order.

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

from guardbot import killswitch, metrics, risk
from guardbot.alerts import Alert, AlertKind
from guardbot.arbiter import Arbiter, Decision, Refusal
from guardbot.audit.store import AuditError, AuditLog, EventKind
from guardbot.book import Held, PositionBook
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.config import Settings
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Intent,
    Liquidation,
    MarginMode,
    MarkPrice,
    Position,
    PositionKey,
    SymbolRules,
)
from guardbot.exchange.errors import ExchangeError
from guardbot.exchange.port import (
    Exchange,
    HoldingsPushed,
    LiquidationsPushed,
    MarksPushed,
    PositionsPushed,
    StreamEvent,
)
from guardbot.executor import REJECT_BACKOFF_MS, Executor, Job
from guardbot.logs import Once
from guardbot.policies.base import PolicyContext, PositionView, Quiet, mark_speed
from guardbot.policies.loader import LoadedPolicy
from guardbot.policies.quiet import MarkBand, mark_band
from guardbot.policies.runner import evaluate_policies
from guardbot.settlement import VISIBLE_AFTER_MS, Settlement
from guardbot.trail import Trail
from guardbot.watch import MarkWatch

log = logging.getLogger(__name__)

# Recent marks kept per symbol for policies that look at volatility.
RECENT_MARKS = 120
# A failing policy or a refused decision is audited once per this many ms per position, not
# on every mark tick.
REPEAT_AUDIT_MS = 60_000
# A position is "near its trigger" (polled fast) within this factor of the largest trigger
# the policies declare.
URGENT_FACTOR = Decimal(2)
DEFAULT_TRIGGER = Decimal("0.05")
# A liquidation explains a position that disappeared if the exchange stamped it no earlier
# than this before the guard last saw the position open (the two clocks differ).
LIQUIDATION_SLACK_MS = 60_000
# A promise that holds while the mark is calm is trusted only below this share of its speed
# (the policy's own reading of the same marks may round in the last digits).
SPEED_SLACK = Decimal("0.999999")
# Liquidation ids already attributed to a death, kept per instance.
ATTRIBUTED = 1024
RECENT_LIQUIDATIONS = 32  # pushed liquidations kept per account
# The read of the liquidations when a position disappears holds up that account's stream
# or poll: at most this long (then the close is recorded with its cause unknown, and a
# later push can still record the liquidation).
LIQUIDATION_READ_S = 2.0
# Reads of positions' histories warming the ledger at once (``Guard._warm``).
WARM_READS = 2
# Refusals the operator is told about at once.
_REFUSAL_ALERTS = {Refusal.BUDGET: AlertKind.BUDGET_EXHAUSTED,
                   Refusal.TOO_MANY_UNCERTAIN: AlertKind.UNCERTAIN}


@dataclass(frozen=True, slots=True)
class _Close:
    """A guarded isolated position that left the book, while what became of it is found:
    a liquidation of ``qty`` (when known) stamped from ``since_ms`` to ``until_ms`` by the
    exchange's clock explains it."""

    key: PositionKey
    closed_ms: int  # local time of the close: the record's time
    since_ms: int
    until_ms: int
    qty: Decimal | None
    detail: dict[str, str]
    net_added: Decimal | None  # what the guard had added to it, read before the close


class Guard:
    """Book, policies, arbiter and executor over one clock, for the accounts it owns."""

    def __init__(
        self,
        settings: Settings,
        exchanges: Mapping[str, Exchange],
        audit: AuditLog,
        policies: Sequence[LoadedPolicy],
        *,
        account_names: Mapping[str, str] | None = None,
        owned: frozenset[str] | None = None,
        may_act: Callable[[str], bool] | None = None,
        notify: Callable[[Alert], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        quiet_bands: bool = True,
    ) -> None:
        self.settings = settings
        self.exchanges = dict(exchanges)
        self.audit = audit
        self.ledger = audit.ledger
        self.policies = list(policies)
        self.account_names = dict(account_names or {})
        # Accounts this instance guards (AccountOwnership decides with several instances).
        self.owned = frozenset(self.exchanges) if owned is None else owned
        # AccountOwnership.may_act: whether that ownership is still confirmed (its lease).
        self._lease: Callable[[str], bool] = may_act or (lambda _account_id: True)
        self.notify = notify or (lambda _alert: None)
        self.clock = clock
        self.book = PositionBook()
        self.arbiter = Arbiter(settings.budgets, dry_run=settings.guard.dry_run)
        self.max_age_ms = int(settings.poll.max_data_age_s * 1000)
        # A call whose answer we gave up on may land until the client's longest timeout
        # (plus slack) has passed.
        self.settle_window_ms = int(
            max(settings.exchange.timeout_s, settings.exchange.margin_timeout_s) * 1000) + 1000
        self.executor = Executor(
            self.exchanges, audit, clock=clock,
            settlement=Settlement(settle_window_ms=self.settle_window_ms),
            on_reread=self.on_reread, notify=self.notify, max_data_age_ms=self.max_age_ms,
            paused=self.paused, may_act=self.may_act,
            reject_backoff_ms=max(int(settings.budgets.cooldown_s * 1000), REJECT_BACKOFF_MS))
        self._rules: dict[str, SymbolRules] = {}
        self.free_balance: dict[str, Decimal] = {}
        self.balance_ms: dict[str, int] = {}  # when each free balance was read
        self.last_snapshot_ms: dict[str, int] = {}
        self.marks: dict[str, deque[MarkPrice]] = {}
        self.ws_connected: dict[str, bool] = dict.fromkeys(self.exchanges, False)
        self.acting = False  # only between the start-up reconcile and stop
        self._locks = {account_id: asyncio.Lock() for account_id in self.exchanges}
        self._urgent: set[str] = set()
        self._once = Once(REPEAT_AUDIT_MS, log)
        triggers = [p.trigger for p in self.policies if p.trigger is not None]
        self._watch = URGENT_FACTOR * max(triggers, default=DEFAULT_TRIGGER)
        # False: every position is evaluated on every update (the reference the tests and
        # benchmarks/guard_tick.py compare the bands with).
        self.quiet_bands = quiet_bands
        # Per account and symbol: the version and rules its band was computed from, and the
        # band (keyed by strings: a tick looks one up per position).
        self._bands: dict[str, dict[str, tuple[Held, SymbolRules | None, MarkBand | None]]] = {}
        # What the guard last decided on each position, for the record of its death.
        self.trail = Trail()
        # Liquidations pushed before the position they explain left the book, and the ids
        # already attributed (a push and a REST read report the same liquidation).
        self._pushed: dict[str, deque[Liquidation]] = {}
        self._attributed: deque[tuple[str, int]] = deque(maxlen=ATTRIBUTED)
        # Closes recorded as closes: a liquidation pushed later can still explain them.
        self._unexplained: dict[PositionKey, _Close] = {}
        # Closes being recorded (their cause is looked up in the background).
        self._recording: set[asyncio.Task[None]] = set()
        # Margin, quantity and the time of a snapshot of each position no call of the guard
        # can have moved: a later move with the same quantity and no call since is someone
        # else's.
        self._margins: dict[PositionKey, tuple[Decimal, Decimal, int]] = {}
        # Per symbol and window: the newest mark a speed was read at, and the speed.
        self._speeds: dict[tuple[str, Decimal], tuple[MarkPrice, Decimal]] = {}
        # What a mark tick visits (guardbot.watch), the positions near their trigger per
        # account (the fast-polling flag), and the liquidation price (and side) of the
        # version last looked at, which orders a tick's accounts.
        self.watch = MarkWatch()
        self._near: dict[str, set[PositionKey]] = {}
        self._liquidations: dict[PositionKey, tuple[Decimal | None, Decimal]] = {}
        # Positions whose history the ledger has been asked for (in the background, when
        # the position is first seen): the first rescue of a position does not wait on a
        # read of the audit database.
        self._warmed: set[PositionKey] = set()
        self._warming: set[asyncio.Task[None]] = set()
        self._warm_slots = asyncio.Semaphore(WARM_READS)

    @property
    def rules(self) -> dict[str, SymbolRules]:
        """Every symbol's margin rules (the daemon loads and refreshes them)."""
        return self._rules

    @rules.setter
    def rules(self, rules: dict[str, SymbolRules]) -> None:
        if rules != self._rules:
            self.watch.reset()  # every cell was computed under the old rules
        self._rules = rules

    def paused(self) -> bool:
        """Whether the kill switch is engaged (``guardbot.killswitch``): no action is
        decided, and none still queued is sent."""
        path = self.settings.guard.kill_switch_file
        return path is not None and killswitch.engaged(path)

    def may_act(self, account_id: str) -> bool:
        """Whether a call on the account may go out now: this instance guards it and its
        ownership is confirmed recently enough that no peer can have taken it over
        (``AccountOwnership.may_act``). Nothing is decided, and nothing queued is sent,
        while it is not."""
        return account_id in self.owned and self._lease(account_id)

    # -- inputs ---------------------------------------------------------------------------

    async def on_snapshot(self, snapshot: AccountSnapshot) -> None:
        """A REST snapshot of one account (poller, resync)."""
        account_id = snapshot.account_id
        self.last_snapshot_ms[account_id] = snapshot.received_ms
        self.free_balance[account_id] = snapshot.free_collateral
        self.balance_ms[account_id] = snapshot.received_ms
        before = set(self.book.isolated_keys(account_id))
        listed = {p.key for p in snapshot.positions if p.is_open}
        last = {k: self.book.confirmed(k) for k in before if k not in listed}
        # Only what the book took: a version older than one it holds proves nothing.
        for position in self.book.apply_snapshot(snapshot):
            await self._observe(position)
        after = set(self.book.isolated_keys(account_id))
        for key in before - after:
            await self.closed(key, last.get(key))
        for key in self.executor.settlement.unsettled_keys() - after:
            if key[0] == account_id:
                # Calls taken over at start-up on a position that closed meanwhile.
                await self.executor.closed(key)
        await self.evaluate(account_id)

    async def on_event(self, account_id: str, event: StreamEvent) -> None:
        """A WebSocket push. An audit failure while handling it (recording a verification,
        say) is logged and the push dropped: it must not stop the streams and with them
        every account's guard. Nothing is sent without a recorded intent."""
        try:
            await self._on_event(account_id, event)
        except AuditError as exc:
            log.error("push for %s not fully handled: %s", account_id, exc)

    async def _on_event(self, account_id: str, event: StreamEvent) -> None:
        if isinstance(event, PositionsPushed):
            self.ws_connected[account_id] = True
            for position in event.positions:
                isolated = position.margin_mode is MarginMode.ISOLATED
                gone = isolated and not position.is_open
                last = self.book.confirmed(position.key) if gone else None
                if not self.book.apply(position):
                    continue
                await self._observe(position)
                if last is not None:
                    await self.closed(position.key, last)
            await self.evaluate(account_id)
        elif isinstance(event, LiquidationsPushed):
            await self._liquidations_pushed(account_id, event.liquidations)
        elif isinstance(event, MarksPushed):
            ticked: dict[str, Decimal] = {}
            for mark in event.marks:
                recent = self.marks.get(mark.symbol)
                if recent is None:
                    recent = self.marks[mark.symbol] = deque(maxlen=RECENT_MARKS)
                if not recent or mark.exchange_ms >= recent[-1].exchange_ms:
                    recent.append(mark)  # in exchange-time order: a late one is dropped
                if self.book.apply_mark(mark.symbol, mark.price, mark.exchange_ms):
                    ticked[mark.symbol] = mark.price
            if ticked:
                await self._ticked(ticked)
        elif isinstance(event, HoldingsPushed):
            self.ws_connected[account_id] = True
        else:  # StreamGap: the streams already resynchronised over REST
            self.ws_connected[account_id] = False

    async def _ticked(self, ticked: Mapping[str, Decimal]) -> None:
        """New marks of ``ticked`` symbols: the positions that may need something at them
        (``guardbot.watch``), account by account, the accounts of the most endangered
        positions first."""
        if not self.quiet_bands:
            accounts = set().union(*(self.book.accounts_on(s) for s in ticked))
            await asyncio.gather(*(self.evaluate(a) for a in accounts))
            return
        visits: dict[str, set[PositionKey]] = {}
        for symbol, mark in ticked.items():
            moving = [s for s in self.watch.speeds(symbol) if self._moving(symbol, s)]
            for key in self.watch.visit(symbol, mark, moving=moving):
                visits.setdefault(key[0], set()).add(key)
        for key in self._in_full(self.executor.busy(), self.executor.held()):
            if key[1] in ticked:
                visits.setdefault(key[0], set()).add(key)
        if not visits:
            return
        closest = {account: min(self._distance(k, ticked[k[1]]) for k in keys)
                   for account, keys in visits.items()}  # fmt: skip
        # All at once, started in that order: the most endangered account is decided first
        # and its action recorded first (the audit writes of the others overlap with it),
        # and an account whose round waits (on its lock, on the database) holds up nobody.
        await asyncio.gather(*(self.evaluate(a, visits[a])
                               for a in sorted(visits, key=closest.__getitem__)))

    def _in_full(self, busy: frozenset[PositionKey],
                 held_back: Mapping[PositionKey, frozenset[ActionKind]]
                 ) -> frozenset[PositionKey]:  # fmt: skip
        """Positions evaluated in full on every update (``busy`` and ``held_back``: the
        executor's): calls not settled yet change their known effect and evidence rule
        without a new version, and a blocked position's call may go out while a round
        awaits."""
        return busy | held_back.keys() | self.executor.settlement.unsettled_keys()

    def _distance(self, key: PositionKey, mark: Decimal) -> Decimal:
        """The position's distance to liquidation at ``mark``, from the liquidation price
        of the version last looked at (only to order a round: unknown ones go first)."""
        found = self._liquidations.get(key)
        if found is None:
            return Decimal(-1)
        distance = risk.liquidation_distance(mark, *found)
        return Decimal(1) if distance is None else distance

    def check_stale(self) -> None:
        """Warn about positions whose data is older than the guard may act on, also those
        no tick visits (housekeeping: the daemon and the backtest call it every second)."""
        if not self.acting:
            return
        now = self.clock.now_ms()
        for account_id in self.owned:
            for held, _ in self.book.isolated_marks(account_id):
                age = now - held.confirmed_ms
                if age > self.max_age_ms:
                    self._warn_stale(held.key, age, now)

    async def on_reread(self, position: Position | None, key: PositionKey) -> None:
        """A position the executor read (evidence for a call, or after a back-off)."""
        if position is None or not position.is_open:
            last = self.book.confirmed(key)
            if self.book.remove(key) is not None:
                await self.closed(key, last)
            else:
                await self.executor.closed(key)
        elif self.book.apply(position):
            await self._observe(position)
        await self.evaluate(key[0])

    async def _observe(self, position: Position) -> None:
        """A new version of a position: evidence for its calls, and a margin move nobody
        in this guard made is recorded as an observation (never counted as the guard's)."""
        await self.executor.observe(position)
        key = position.key
        if (key not in self._warmed and position.is_open and key[0] in self.owned
                and key[2] is MarginMode.ISOLATED):
            self._warmed.add(key)
            task = asyncio.create_task(self._warm(key))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)
        unexplained = self._unexplained.get(key)
        if (unexplained is not None and position.is_open
                and position.exchange_ms < unexplained.until_ms):
            # Open again: only a liquidation stamped before the reopen explains that close.
            self._unexplained[key] = replace(unexplained, until_ms=position.exchange_ms)
        settlement = self.executor.settlement
        if (not position.is_open or settlement.unsettled(key)
                or key[0] not in self.owned or key[2] is not MarginMode.ISOLATED):
            # The guard's own calls explain (or may explain) what moves now.
            self._margins.pop(key, None)
            return
        touched = settlement.last_touched(key)
        if touched is not None and position.received_ms <= touched + VISIBLE_AFTER_MS:
            # A call of the guard may have moved it: not a baseline (nor someone else's).
            self._margins.pop(key, None)
            return
        before = self._margins.get(key)
        self._margins[key] = (position.margin, position.qty, position.received_ms)
        if (before is None or before[1] != position.qty or before[0] == position.margin
                or (touched is not None and touched >= before[2])):
            return  # new, a fill (the quantity moved), unchanged, or a call of the guard since
        change = position.margin - before[0]
        log.warning("%s %s: margin moved by %s without a call of the guard (by hand or "
                    "another bot)", self.name(key[0]), key[1], change)
        await self.audit.record_observation(key[0], key[1], "margin_changed_by_others", {
            "margin_mode": key[2].value, "margin_before": str(before[0]),
            "margin_after": str(position.margin), "change": str(change),
            "source": position.source.value})

    async def closed(self, key: PositionKey, last: Position | None = None) -> None:
        """An isolated position left the book (``last``: as the exchange last confirmed it).
        A new position on the symbol starts with nothing of this one: its calls are settled,
        its hold-back, cooldown and net margin added are gone (the ledger is told at once).
        What became of it is recorded in the background, at the time of the close: a
        liquidation (``position_liquidated``, from the exchange's liquidation data, with the
        guard's last decisions) or a close (``position_closed``). The account's other
        positions are decided on meanwhile: finding the cause never holds up a rescue."""
        self._bands.get(key[0], {}).pop(key[1], None)
        self._margins.pop(key, None)
        self._forget(key)
        await self.executor.closed(key)
        notes = self.trail.take(key)
        if key[0] not in self.owned:
            return  # the instance guarding the account records it
        now = self.clock.now_ms()
        net_added = None
        with contextlib.suppress(AuditError):  # before the ledger starts the symbol over
            net_added = await self.ledger.net_added(key, now)
        self.ledger.position_closed(key[0], key[1], now)
        detail = {"margin_mode": key[2].value, "guard_last": notes}
        if last is not None:
            detail |= self._last_seen(last)
        # The liquidation, if any, is stamped by the exchange's clock: the window is too.
        seen = now if last is None else last.exchange_ms
        waited = 0 if last is None else max(0, now - last.received_ms)
        close = _Close(key, now, seen - LIQUIDATION_SLACK_MS,
                       seen + waited + LIQUIDATION_SLACK_MS,
                       None if last is None else abs(last.qty), detail, net_added)
        task = asyncio.create_task(self._explain(close))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _warm(self, key: PositionKey) -> None:
        """Read the position's history into the ledger (budgets, net margin added), a few
        reads at a time so that a start-up with thousands of positions does not queue the
        decisions' own reads behind them."""
        async with self._warm_slots:
            try:
                await self.ledger.net_added(key, self.clock.now_ms())
            except AuditError as exc:  # the evaluation reads it again, and reports it
                log.debug("could not read the history of %s %s yet: %s", key[0], key[1], exc)

    async def warmed(self) -> None:
        """Wait until the history of every position seen so far is read (benchmarks)."""
        while self._warming:
            await asyncio.gather(*self._warming)

    async def recorded(self) -> None:
        """Wait until every close seen so far is recorded (before the audit log closes)."""
        while self._recording:
            await asyncio.gather(*self._recording)

    async def _explain(self, close: _Close) -> None:
        key, name = close.key, self.name(close.key[0])
        try:
            liquidation, unknown = await self._liquidation_of(close)
            if liquidation is None:  # pushed while the read was out?
                liquidation = self._matching(close, self._pushed.get(key[0], ()))
            if liquidation is not None:
                await self._record_liquidation(close, liquidation, close.detail)
                return
            detail = dict(close.detail)
            if unknown is not None:
                detail["cause_unknown"] = unknown
            # From here a liquidation the exchange reports later still explains it (the
            # order of its push and the position's is not documented, docs/exchange.md).
            self._unexplained[key] = close
            await self.audit.record_observation(key[0], key[1], "position_closed", detail,
                                                at_ms=close.closed_ms)
        except AuditError as exc:
            log.error("%s %s: the close could not be recorded: %s", name, key[1], exc)
            return
        except Exception:  # a bug here must not go unseen, nor stop anything else
            log.exception("%s %s: recording the close failed", name, key[1])
            return
        self.notify(Alert(AlertKind.LIQUIDATION, name, key[1], "isolated position closed"
                          + ("" if unknown is None else " (or liquidated: unknown)")))
        log.warning("isolated position %s %s is gone (%s)", name, key[1],
                    "closed" if unknown is None else f"closed or liquidated: {unknown}")

    async def _record_liquidation(self, close: _Close, liquidation: Liquidation,
                                  detail: dict[str, str]) -> None:
        key = close.key
        detail = detail | {
            "liquidation_id": str(liquidation.liquidation_id),
            "liquidated_ms": str(liquidation.time_ms),
            "qty": str(liquidation.qty),
            "transfer_price": str(liquidation.transfer_price),
        }
        if liquidation.fee is not None:
            detail["fee"] = str(liquidation.fee)
        if liquidation.to_insurance_fund is not None:
            detail["to_insurance_fund"] = str(liquidation.to_insurance_fund)
        if close.net_added is not None:
            detail["guard_net_added"] = str(close.net_added)
        await self.audit.record_observation(key[0], key[1], "position_liquidated", detail,
                                            at_ms=close.closed_ms)
        self._attributed.append((key[0], liquidation.liquidation_id))
        name = self.name(key[0])
        self.notify(Alert(AlertKind.LIQUIDATION, name, key[1],
                          f"isolated position liquidated at {liquidation.transfer_price}"))
        log.warning("isolated position %s %s was LIQUIDATED at %s (guardbot audit why)", name,
                    key[1], liquidation.transfer_price)

    def _last_seen(self, last: Position) -> dict[str, str]:
        seen = {"last_seen_ms": str(last.received_ms), "last_margin": str(last.margin),
                "last_mark": str(last.mark_price), "last_qty": str(last.qty)}
        rules = self.rules.get(last.symbol)
        if rules is not None:
            with contextlib.suppress(Exception):  # a record never fails on the math
                view = PositionView.of(last, rules)
                if view.liquidation_price is not None:
                    seen["last_liquidation_price"] = str(view.liquidation_price)
                if view.distance is not None:
                    seen["last_distance"] = str(view.distance)
        return seen

    async def _liquidation_of(self, close: _Close
                              ) -> tuple[Liquidation | None, str | None]:  # fmt: skip
        """The exchange's liquidation of the position that just left the book, if it was
        liquidated: one pushed already, else from ``GET /v1/liquidations``. The second value
        says why it cannot be known (the read failed or took too long)."""
        key = close.key
        found = self._matching(close, self._pushed.get(key[0], ()))
        if found is not None:
            return found, None
        name = self.name(key[0])
        try:
            async with asyncio.timeout(LIQUIDATION_READ_S):
                listed = await self.exchanges[key[0]].get_liquidations(close.since_ms)
        except TimeoutError:
            log.error("%s %s: the liquidations did not answer within %g s", name, key[1],
                      LIQUIDATION_READ_S)
            return None, f"liquidations not read within {LIQUIDATION_READ_S:g} s"
        except ExchangeError as exc:
            log.error("%s %s: cannot read the liquidations: %s", name, key[1], exc)
            return None, f"liquidations not readable: {exc}"[:300]
        return self._matching(close, listed), None

    def _matching(self, close: _Close, liquidations: Iterable[Liquidation]
                  ) -> Liquidation | None:  # fmt: skip
        """The newest liquidation that can be this position's: its symbol, inside the close's
        window, of its size (a cross position on the symbol is another size, or the same
        and then indistinguishable), and not attributed already."""
        account_id, symbol = close.key[0], close.key[1]
        candidates = [
            liquidation for liquidation in liquidations
            if liquidation.symbol == symbol
            and close.since_ms <= liquidation.time_ms <= close.until_ms
            and (close.qty is None or abs(liquidation.qty) == close.qty)
            and (account_id, liquidation.liquidation_id) not in self._attributed]
        return max(candidates, key=lambda item: item.time_ms, default=None)

    async def _liquidations_pushed(self, account_id: str,
                                   liquidations: Sequence[Liquidation]) -> None:
        """A ``liquidationsaccount`` push. It does not say isolated or cross, so it closes
        nothing itself: kept until the position's own update shows it gone. One that
        explains a close recorded already (the push came after the read) is recorded now,
        at the time of that close."""
        if account_id not in self.owned:
            return
        pushed = self._pushed.get(account_id)
        if pushed is None:
            pushed = self._pushed[account_id] = deque(maxlen=RECENT_LIQUIDATIONS)
        now = self.clock.now_ms()
        for key in [k for k, c in self._unexplained.items()
                    if now - c.closed_ms > 2 * LIQUIDATION_SLACK_MS]:
            del self._unexplained[key]
        for liquidation in liquidations:
            key = (account_id, liquidation.symbol, MarginMode.ISOLATED)
            close = self._unexplained.get(key)
            if close is not None and self._matching(close, (liquidation,)) is not None:
                del self._unexplained[key]
                try:
                    await self._record_liquidation(
                        close, liquidation, close.detail | {"recorded_after_close": "true"})
                except AuditError as exc:
                    log.error("%s %s: the liquidation could not be recorded: %s",
                              self.name(account_id), liquidation.symbol, exc)
            else:
                pushed.append(liquidation)

    # -- ownership -------------------------------------------------------------------------

    async def reconcile_unfinished(self, accounts: Iterable[str]) -> None:
        """Settle actions with no known outcome (a crash between intent and outcome, or an
        instance that died). Never sent: recorded as such. Sent: handed to the executor,
        which settles them from evidence exactly as its own uncertain calls."""
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

    async def release(self, accounts: frozenset[str]) -> None:
        """Stop acting on ``accounts`` and finish the executor's work on them; if they come
        back, their history is read again from the audit log (a peer acted on them)."""
        self.owned = self.owned - accounts
        await asyncio.gather(*(self._release_account(account_id) for account_id in accounts))

    async def _release_account(self, account_id: str) -> None:
        async with self._locks[account_id]:  # an evaluation of it may be deciding right now
            await self.executor.release(account_id)
        self.ledger.forget(account_id)
        self.trail.forget_account(account_id)
        self.watch.forget_account(account_id)
        for key in [k for k in self._liquidations if k[0] == account_id]:
            del self._liquidations[key]
        self._warmed = {k for k in self._warmed if k[0] != account_id}
        self._near.pop(account_id, None)
        self._urgent.discard(account_id)

    # -- deciding -------------------------------------------------------------------------

    def is_urgent(self, account_id: str) -> bool:
        """Whether the account has a position near its trigger (polled on the fast interval)."""
        return account_id in self._urgent

    def name(self, account_id: str) -> str:
        return self.account_names.get(account_id, account_id)

    def _forget(self, key: PositionKey) -> None:
        self._warmed.discard(key)
        self.watch.forget(key)
        self._liquidations.pop(key, None)
        self._near.get(key[0], set()).discard(key)

    async def evaluate(self, account_id: str, only: set[PositionKey] | None = None) -> None:
        """Evaluate the account's fresh isolated positions (all, or those on the symbols of
        ``only``) and act on the decisions."""
        if not self.acting or account_id not in self.owned:
            return
        if not self.may_act(account_id):
            self._once.warn(("lapsed", account_id), self.clock.now_ms(),
                            "%s: not acting, this instance's ownership of the account lapsed"
                            " (the lock database has not confirmed it recently)",
                            self.name(account_id))
            return
        async with self._locks[account_id]:
            try:
                await self._evaluate(account_id, only)
            except (AuditError, ExchangeError) as exc:
                # One failed round must not stop the guard: the next update tries again.
                log.error("evaluation of %s failed: %s", account_id, exc)

    async def _evaluate(self, account_id: str, only: set[PositionKey] | None = None) -> None:
        now = self.clock.now_ms()
        blocked = self.executor.busy()
        held_back = self.executor.held()
        settlement = self.executor.settlement
        in_full = self._in_full(blocked, held_back)  # as is everything without a band
        shadow: dict[PositionKey, Decimal] = {}
        if self.settings.guard.dry_run:
            # What the dry run would have sent so far: decided on (in full) as if it had been.
            shadow = await self.ledger.dry_run_effects(
                account_id, self.book.isolated_keys(account_id), now)
            in_full = in_full | shadow.keys()
        views: dict[PositionKey, PositionView] = {}
        intents: list[Intent] = []
        held_marks = self.book.isolated_marks(
            account_id, None if only is None else {k[1] for k in only})
        near = self._near.setdefault(account_id, set())
        if only is None:
            near.clear()
        bands = self._bands.setdefault(account_id, {})
        rules = self.rules
        watch = self.watch
        for reached, (held, mark) in enumerate(held_marks):
            key = held.key
            near.discard(key)
            if self.quiet_bands and not (in_full and key in in_full):
                symbol = key[1]
                cached = bands.get(symbol)
                if cached is None or cached[0] is not held or cached[1] is not rules.get(symbol):
                    cached = bands[symbol] = self._band(held)
                band = cached[2]
                cell = None if band is None else band.cell(mark)
                if cell is not None and cell.speeds and self._moving(symbol, cell.speeds):
                    cell = None  # a promise that holds only while the mark is calm
                if cell is not None:
                    # No policy of it can act at this mark: only what a tick does besides.
                    watch.cell(key, cell)
                    if cell.near:
                        near.add(key)
                    age = now - held.confirmed_ms
                    if age > self.max_age_ms:
                        self._warn_stale(key, age, now)
                    continue
            if self.quiet_bands:
                watch.always(key)
            position = self.book.current(held)
            try:
                view, found = await self._evaluate_position(position, blocked, now,
                                                            shadow.get(position.key, Decimal(0)))
            except (AuditError, ExchangeError):
                # The whole round: nothing of this account can be trusted now. The positions
                # it did not reach keep no cell of an older version: the next tick visits them.
                if self.quiet_bands:
                    for later, _ in held_marks[reached + 1:]:
                        watch.always(later.key)
                raise
            except Exception as exc:
                # One bad position (a mark of 0, a bug) must never leave the others
                # unguarded: it is skipped this round and reported.
                await self._position_failed(position, exc, now)
                continue
            if view is None:
                continue
            self._liquidations[key] = (view.liquidation_price, position.qty)
            if view.distance is not None and view.distance < self._watch:
                near.add(key)
            if found:
                views[position.key] = view
                intents.extend(found)
        if near:
            self._urgent.add(account_id)
        else:
            self._urgent.discard(account_id)
        if not intents:
            return
        keys = [held.key for held, _ in held_marks]
        state = await self.ledger.arbiter_state(
            account_id, keys, now,
            cooldown_s=self.settings.budgets.cooldown_s,
            free_balance=self._fresh_balance(account_id, now),
            # ADDs in flight when the balance was read may not be in it yet
            balance_read_ms=self.balance_ms.get(account_id, now),
            settle_window_ms=self.settle_window_ms,
            blocked=blocked, held=held_back,
            unsettled={k: n for k in keys if (n := settlement.unsettled(k))},
            uncertain={k: n for k in keys if (n := settlement.uncertain_calls(k))},
            kill_switch=self.paused(),
            dry_run=self.settings.guard.dry_run, dry_run_effects=shadow,
        )  # fmt: skip
        decisions = self.arbiter.decide(intents, state)
        await asyncio.gather(*(self._act(d, views, now) for d in decisions))

    def _fresh_balance(self, account_id: str, now: int) -> Decimal | None:
        """The account's free balance, or ``None`` (unknown) once it is older than the data
        the guard may act on: polls failing while pushes keep the positions fresh must not
        let ADDs spend the reserve on a balance read minutes ago."""
        read_ms = self.balance_ms.get(account_id)
        if read_ms is None or now - read_ms > self.max_age_ms:
            return None
        return self.free_balance.get(account_id)

    async def _evaluate_position(
        self, position: Position, blocked: frozenset[PositionKey], now: int,
        shadow: Decimal = Decimal(0),
    ) -> tuple[PositionView | None, list[Intent]]:
        """The position's view (``None``: not guarded now) and its policies' intents (none
        while it is blocked, its data is stale, or not yet fresh enough). ``shadow``: the
        margin a dry run would have moved on it (``Ledger.dry_run_effects``)."""
        account_id = position.account_id
        rules = self.rules.get(position.symbol)
        age = self.book.age_ms(position.key, now)
        if rules is None or age is None:
            self._once.warn(("no rules", position.symbol), now,
                            "no symbol rules for %s: not guarded", position.symbol)
            return None, []
        settlement = self.executor.settlement
        known = settlement.known_effect(position.key)
        if known:
            # Calls the exchange confirmed that no snapshot shows yet: deciding on the
            # snapshot's margin alone would add what is already there.
            position = replace(position, margin=position.margin + known)
        if shadow:
            position = replace(position, margin=position.margin + shadow)
        view = PositionView.of(position, rules, age)
        if position.key in blocked:
            return view, []
        if age > self.max_age_ms:
            # Never act on stale data: wait for the poller to refresh it.
            self._warn_stale(position.key, age, now)
            return view, []
        evidence_after = settlement.evidence_after(position.key)
        if evidence_after is not None and now - age < evidence_after:
            # A call's answer was lost: only data asked for since (in the same millisecond
            # counts: the read is made after the answer was given up on) can show it did not
            # land yet. The executor reads it at once; decide on that.
            return view, []
        evaluation = evaluate_policies(self.policies, view,
                                       await self._context(position, now, shadow),
                                       self.account_names.get(account_id))
        for failure in evaluation.failures:
            self.trail.note(position.key, now, "failed", f"failed {failure.policy}",
                            f"policy {failure.policy} failed: {failure.error[:200]}")
            if self._once.warn(("policy", failure.policy, *position.key), now,
                               "policy %s failed on %s %s: %s", failure.policy, account_id,
                               position.symbol, failure.error):
                await self.audit.record_observation(
                    account_id, position.symbol, "policy_failed",
                    {"policy": failure.policy, "error": failure.error[:500]})
        return view, list(evaluation.intents)

    def _warn_stale(self, key: PositionKey, age: int, now: int) -> None:
        account_id, symbol = key[0], key[1]
        self.trail.note(key, now, "stale", "stale",
                        lambda: f"not acting: data {age / 1000:.1f} s old")
        if self._once.warn(("stale", *key), now, "%s %s: data %d ms old, not acting",
                           account_id, symbol, age):
            self.notify(Alert(AlertKind.DATA_STALE, self.name(account_id), symbol,
                              f"data {age / 1000:.1f} s old: not acting"))

    def _moving(self, symbol: str, speeds: tuple[tuple[Decimal, Decimal], ...]) -> bool:
        """Whether the symbol's mark moves at least as fast as one of ``speeds``
        (``Quiet.calm``), read as the policies read it (``policies.base.mark_speed``,
        either direction)."""
        return any(abs(self._speed(symbol, window_s)) >= limit * SPEED_SLACK
                   for limit, window_s in speeds)

    def _speed(self, symbol: str, window_s: Decimal) -> Decimal:
        """``mark_speed`` of the symbol's recent marks, read once per new mark (a tick
        re-evaluates every account holding the symbol)."""
        marks = self.marks.get(symbol)
        if not marks:
            return Decimal(0)
        newest = marks[-1]
        cached = self._speeds.get((symbol, window_s))
        if cached is None or cached[0] is not newest:
            cached = self._speeds[(symbol, window_s)] = (newest, mark_speed(marks, window_s))
        return cached[1]

    def _band(self, held: Held) -> tuple[Held, SymbolRules | None, MarkBand | None]:
        """The band of ``held``'s version under the current rules of its symbol, with what
        it was computed from (``_evaluate`` keeps it until either changes)."""
        rules = self.rules.get(held.key[1])
        quiet = self._quiet(held.key)
        band = None
        if rules is not None and quiet is not None:
            try:
                view = PositionView.of(held.position, rules)
                band = mark_band(view, quiet, self._watch)
                self._liquidations[held.key] = (view.liquidation_price, held.position.qty)
            except Exception:  # the full evaluation reports why (_position_failed)
                band = None
        return held, rules, band

    def _quiet(self, key: PositionKey) -> Quiet | None:
        """Where none of the policies applying to the position acts; ``None`` if one of them
        promises nothing."""
        quiet = Quiet()
        name = self.account_names.get(key[0])
        for loaded in self.policies:
            if loaded.applies_to(key[0], key[1], name):
                if loaded.quiet is None:
                    return None
                quiet &= loaded.quiet
        return quiet

    async def _position_failed(self, position: Position, exc: Exception, now: int) -> None:
        metrics.EVALUATION_FAILURES.labels(account=metrics.account_label(position.account_id)).inc()
        error = f"{type(exc).__name__}: {exc}"
        if self._once.warn(("failed", *position.key), now,
                           "evaluating %s %s failed, skipped: %s", position.account_id,
                           position.symbol, error):
            log.debug("evaluation failure", exc_info=exc)
            with contextlib.suppress(AuditError):
                await self.audit.record_observation(
                    position.account_id, position.symbol, "evaluation_failed",
                    {"error": error[:500]})

    async def _context(self, position: Position, now: int, shadow: Decimal = Decimal(0)
                       ) -> PolicyContext:  # fmt: skip
        net_added = await self.ledger.net_added(position.key, now)
        if net_added is not None:
            net_added += shadow  # a dry run's shadow counts as added, as it would have been
        return PolicyContext(
            now_ms=now,
            free_balance=self.free_balance.get(position.account_id),
            recent_marks=tuple(self.marks.get(position.symbol, ())),
            original_margin=None if net_added is None else position.margin - net_added,
            net_added=net_added or Decimal(0),
        )

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
        # The notes are worded lazily (the guard notes on every tick) from the few values
        # they need, not from the intent and decision, which a trail of every position
        # would keep alive (their details, the views) until the note is overwritten.
        kind, amount, why, said = intent.kind, intent.amount, intent.reason, decision.reason
        if decision.approved:
            dry = " (dry run)" if decision.dry_run else ""
            self.trail.note(intent.key, now, "decided", f"decided {kind}",
                            lambda: f"{kind} {amount} decided{dry}: {why}")
            await self.executor.submit(job)
            return
        # Refusals are audited once a minute per position and refusal; routine ones
        # (cooldown, ranking, a call still open) are pacing, not news.
        refusal = decision.refusal
        label = refusal.value if refusal else "refused"
        self.trail.note(intent.key, now, "refused", f"refused {kind} {refusal}",
                        lambda: f"{kind} {amount} refused ({label}): {said}")
        if refusal is None or refusal.routine:
            return
        if not self._once.warn(("refused", *intent.key, refusal.value), now,
                               "%s %s %s refused: %s", intent.kind, intent.amount,
                               intent.symbol, decision.reason):
            return
        await self.executor.refused(job, decision.reason)
        alert = _REFUSAL_ALERTS.get(refusal)
        if alert is not None:
            self.notify(Alert(alert, self.name(intent.account_id), intent.symbol,
                              f"{intent.kind} refused: {decision.reason}",
                              {"amount": intent.amount, "reason": intent.reason}))

