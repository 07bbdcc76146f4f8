"""One backtest scenario: a book on a price path, guarded by the daemon's own decision path in
virtual time, next to an unguarded twin of every account.

The daemon's driver is ``guardbot.daemon`` with the REST poller and the WebSocket streams;
this is a second driver of the same parts. ``Daemon.start`` loads the symbol rules,
reconciles and takes the first snapshots; then the poller (``Poller.tick`` at the fast
interval, as the daemon's scheduler calls it), the streams (``Streams`` over the venue's
pushes), the executor's workers and its verification expiry run as they do in
``guardbot run``, on a ``ManualClock`` under ``run_virtual``. The only thing added is the
path: every point moves the engine's marks (``Venue.move_marks``) at its time.

Every account of the book is opened twice on one engine: guarded, and an unguarded twin
with the same positions, margins and free USDC. The config runs as written except
``[guard] dry_run`` and ``kill_switch_file``, which would make a backtest decide nothing;
no alert is sent and no account of the config is touched. The audit log is a real one (SQLite and
its fsync'd spool) in a scratch folder, on /dev/shm when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from guardbot import __version__
from guardbot.audit import schema
from guardbot.audit.store import AuditLog
from guardbot.backtest.oracle import verdict
from guardbot.backtest.paths import PricePath
from guardbot.backtest.portfolio import Book, BookAccount, BookError
from guardbot.backtest.results import (
    AuditedAction,
    PositionResult,
    Sample,
    ScenarioResult,
    WatchedArbiter,
    audited_actions,
    compare,
    observation_counts,
)
from guardbot.backtest.venue import Venue, VenueParams
from guardbot.clock import ManualClock, run_virtual
from guardbot.config import Settings
from guardbot.daemon import Daemon, config_hash
from guardbot.domain import ActionKind, MarginMode
from guardbot.feeds.streams import Streams
from guardbot.policies.loader import LoadedPolicy
from guardbot.sim.engine import Engine
from guardbot.sim.margin import MARKETS
from guardbot.sim.params import EngineError

log = logging.getLogger(__name__)

MAX_SAMPLES = 1500  # chart points per position
LARGE_DEPOSIT = Decimal(10) ** 12  # funds the dry run that measures what a book costs


@dataclass(frozen=True, slots=True)
class RunOptions:
    venue: VenueParams = field(default_factory=VenueParams)
    samples: bool = False  # keep chart samples


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder, in memory (/dev/shm) when the machine has one."""
    shm = Path("/dev/shm")  # noqa: S108 (mkdtemp below makes a private folder in it)
    base = shm if shm.is_dir() else None
    folder = Path(tempfile.mkdtemp(prefix="guardbot-backtest-", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class AuditTemplate:
    """One migrated SQLite database, copied for every run (migrating takes longer than a
    short run)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "template.db"
        self._runs = 0
        schema.upgrade(f"sqlite:///{self.path}")

    def fresh(self) -> tuple[str, Path]:
        self._runs += 1
        run = self.folder / f"run{self._runs}"
        run.mkdir()
        shutil.copyfile(self.path, run / "audit.db")
        return f"sqlite:///{run / 'audit.db'}", run / "spool"


def _account_id(role: str, account: BookAccount) -> str:
    if role == "guarded" and account.account_id:
        return account.account_id.lower()
    return "0x" + hashlib.sha256(f"{role}:{account.name}".encode()).hexdigest()


def _open_account(engine: Engine, role: str, index: int, account: BookAccount,
                  deposit: Decimal, start: dict[str, Decimal]) -> str:  # fmt: skip
    """Open ``account`` on ``engine``: fund it, trade every position at its entry, set the
    margin the book gives; marks go back to their start afterwards."""
    account_id = engine.create_account(f"ed25519:backtest-{role}-{index}", "read,trading",
                                       deposit, _account_id(role, account))
    for position in account.positions:
        where = f"account {account.name}, {position.symbol}"
        entry = position.entry or start[position.symbol]
        try:
            engine.advance({position.symbol: entry})
            view = engine.open_position(account_id, position.symbol, position.margin_mode,
                                        position.qty, position.leverage)
            if position.margin is not None and position.margin != view.margin:
                move = position.margin - view.margin
                engine.adjust_margin(account_id, position.symbol,
                                     "ADD" if move > 0 else "REDUCE", format(abs(move), "f"))
        except EngineError as exc:
            raise BookError(f"{where}: the simulated exchange refuses it: {exc.message}"
                            ) from None
    engine.advance(start)
    return account_id


def open_book(engine: Engine, book: Book) -> dict[str, tuple[str, str]]:
    """Every account of the book, guarded and twin: ``name -> (guarded id, twin id)``."""
    start = {symbol: book.start_mark(symbol) for symbol in engine.markets}
    opened = {}
    for index, account in enumerate(book.accounts):
        deposit = account.deposit_usdc
        if deposit is None:
            # What opening costs (margins, fees), measured on a throw-away engine.
            dry = Engine(engine.clock, engine.markets, start)
            probe = _open_account(dry, "probe", index, account, LARGE_DEPOSIT, start)
            deposit = (account.free_usdc or Decimal(0)) + LARGE_DEPOSIT - \
                dry.account(probe).holding
        opened[account.name] = tuple(
            _open_account(engine, role, index, account, deposit, start)
            for role in ("guarded", "twin"))
    if engine.liquidations:
        gone = engine.liquidations[0]
        raise BookError(f"{gone.symbol}: a position is liquidated while the book is opened "
                        "(entries too far apart on one symbol); give it its own symbol or "
                        "closer entries")
    engine.drain_changes()
    return {name: (ids[0], ids[1]) for name, ids in opened.items()}


class Scenario:
    """One book on one path under one config; ``run`` returns its result."""

    def __init__(self, book: Book, path: PricePath, settings: Settings,
                 policies: Sequence[LoadedPolicy], options: RunOptions = RunOptions()
                 ) -> None:  # fmt: skip
        self.book = book
        self.path = path
        self.settings = settings.model_copy(update={"guard": settings.guard.model_copy(
            update={"dry_run": False, "kill_switch_file": None})})
        self.policies = list(policies)
        self.options = options

    def run(self, template: AuditTemplate, clock: ManualClock | None = None) -> ScenarioResult:
        clock = clock or ManualClock()
        started = time.perf_counter()
        result = run_virtual(self._run(template, clock), clock)
        result.wall_s = time.perf_counter() - started
        return result

    def _marks(self, engine: Engine) -> dict[str, list[Decimal]]:
        path, book = self.path, self.book
        return {symbol: path.marks(book.start_mark(symbol), engine.markets[symbol].quote_tick,
                                   mirrored=path.adverse and book.short_only(symbol))
                for symbol in engine.markets}  # fmt: skip

    async def _run(self, template: AuditTemplate, clock: ManualClock) -> ScenarioResult:
        symbols = self.book.symbols()
        start_ms = clock.now_ms()
        engine = Engine(clock.now_ms, {s: MARKETS[s] for s in symbols},
                        {s: self.book.start_mark(s) for s in symbols})
        ids = open_book(engine, self.book)
        marks = self._marks(engine)
        guarded = {ids[a.name][0]: a.name for a in self.book.accounts}
        venue = Venue(engine, clock, self.options.venue, frozenset(guarded))
        positions = self._positions(engine, ids, marks)
        url, spool = template.fresh()
        audit = await AuditLog.open(url, spool, clock=clock)
        try:
            await audit.start_run(__version__, config_hash(self.settings), "backtest")
            exchanges = {account_id: venue.exchange(account_id) for account_id in guarded}
            daemon = Daemon(self.settings, exchanges, audit, self.policies,
                            account_names=guarded, clock=clock)
            watched = WatchedArbiter(daemon.guard.arbiter)
            daemon.guard.arbiter = watched
            phases = {"engine": 0.0}
            if self.options.samples:
                _sample(engine, positions, clock)  # before the guard's first decision
            await daemon.start()
            async with asyncio.TaskGroup() as group:
                background = [group.create_task(daemon.guard.executor.run()),
                              group.create_task(self._poll(daemon, clock)),
                              group.create_task(self._expire(daemon, clock))]
                for index, exchange in enumerate(exchanges.values()):
                    streams = Streams(exchange, daemon.guard.on_event, daemon.poller.poll_now,
                                      public=index == 0, clock=clock)
                    background.append(group.create_task(streams.run()))
                await self._drive(venue, marks, positions, clock, phases)
                daemon.guard.acting = False
                # Calls whose answers were lost settle from the polls within the window.
                await clock.sleep(daemon.guard.settle_window_ms / 1000 + 1)
                await daemon.guard.executor.drain()
                await daemon.guard.recorded()
                for task in background:
                    task.cancel()
            await audit.flush()
            actions = audited_actions(audit.engine)
            observations = observation_counts(audit.engine)
        finally:
            await audit.aclose()
        ledger = compare(((c.account_id, c.symbol, c.kind, c.amount) for c in venue.applied),
                         actions)
        self._settle(positions, ids, engine, venue, watched, actions)
        return ScenarioResult(self.path.name, self.path.speed, self.path.duration_ms / 1000,
                              list(positions.values()), watched.refusals, ledger,
                              venue.counts, start_ms=start_ms,
                              steepest=self.path.steepest, phases=phases,
                              observations=observations)

    def _positions(self, engine: Engine, ids: dict[str, tuple[str, str]],
                   marks: dict[str, list[Decimal]]) -> dict[tuple[str, str], PositionResult]:
        """Every isolated position of the book, as opened, with the oracle's verdict."""
        found = {}
        budgets = self.settings.budgets
        for account in self.book.accounts:
            guarded_id = ids[account.name][0]
            state = engine.account(guarded_id)
            free = engine.max_add(state)
            for position in account.positions:
                if not position.isolated:
                    continue
                held = state.positions[(position.symbol, "ISOLATED")]
                market = engine.markets[position.symbol]
                found[(guarded_id, position.symbol)] = PositionResult(
                    account.name, position.symbol, position.side, position.leverage,
                    held.qty, held.cost_position, held.margin,
                    verdict(market, held.margin, held.qty, held.cost_position,
                            marks[position.symbol], budgets, free))
        return found

    async def _drive(self, venue: Venue, marks: dict[str, list[Decimal]],
                     positions: dict[tuple[str, str], PositionResult], clock: ManualClock,
                     phases: dict[str, float]) -> None:  # fmt: skip
        """Move the marks at every point of the path."""
        offsets = self.path.offsets_ms
        start_ms = clock.now_ms()
        stride = max(1, math.ceil(len(offsets) / MAX_SAMPLES)) if self.options.samples else 0
        applied = 0
        for index in range(1, len(offsets)):
            wait_ms = start_ms + offsets[index] - clock.now_ms()
            if wait_ms > 0:
                await clock.sleep(wait_ms / 1000)
            moved = {s: series[index] for s, series in marks.items()
                     if series[index] != series[index - 1]}  # fmt: skip
            began = time.perf_counter()
            venue.move_marks(moved)
            phases["engine"] += time.perf_counter() - began
            if stride and (index % stride == 0 or len(venue.applied) != applied
                           or index == len(offsets) - 1):
                applied = len(venue.applied)
                _sample(venue.engine, positions, clock)

    async def _poll(self, daemon: Daemon, clock: ManualClock) -> None:
        """The poller's job, as the daemon's scheduler runs it: every account ticks at the
        fast interval and polls when due."""
        interval = min(self.settings.poll.fast_interval_s, self.settings.poll.interval_s)
        accounts = list(daemon.exchanges)
        while True:
            await clock.sleep(interval)
            await asyncio.gather(*(daemon.poller.tick(a) for a in accounts))

    async def _expire(self, daemon: Daemon, clock: ManualClock) -> None:
        """The daemon's housekeeping that bears on decisions and their trail: verifications
        expire, stale data is noted."""
        while True:
            await clock.sleep(1.0)
            await daemon.guard.executor.expire()
            daemon.guard.check_stale()

    def _settle(self, positions: dict[tuple[str, str], PositionResult],
                ids: dict[str, tuple[str, str]], engine: Engine, venue: Venue,
                watched: WatchedArbiter, actions: Sequence[AuditedAction]) -> None:  # fmt: skip
        twins = {guarded: twin for guarded, twin in ids.values()}
        for event in engine.liquidations:
            if event.margin_mode != "ISOLATED":
                continue
            for guarded_id, twin_id in twins.items():
                key = (guarded_id, event.symbol)
                if key in positions:
                    result = positions[key]
                    if event.account_id == guarded_id:
                        result.guarded_liquidated_ms = result.guarded_liquidated_ms or \
                            event.time_ms
                    elif event.account_id == twin_id:
                        result.unguarded_liquidated_ms = result.unguarded_liquidated_ms or \
                            event.time_ms
        for (account_id, symbol), result in positions.items():
            extra, peak = Decimal(0), Decimal(0)
            for change in venue.applied:
                if (change.account_id, change.symbol) != (account_id, symbol):
                    continue
                result.applied.append((change.time_ms, change.kind, change.amount))
                if change.kind is ActionKind.ADD:
                    result.added += change.amount
                    extra += change.amount
                else:
                    result.swept += change.amount
                    extra -= change.amount
                peak = max(peak, extra)
            result.peak_extra, result.final_extra = peak, extra
            position_key = (account_id, symbol, MarginMode.ISOLATED)
            result.refusals = watched.refusals_by_position.get(position_key, result.refusals)
            result.last_decisions = list(watched.last.get(position_key, ()))
            result.history = [a for a in actions
                              if (a.account_id, a.symbol) == (account_id, symbol)]
            for action in result.history:
                result.actions[f"{action.kind.value} {action.status.value}"] += 1


def _sample(engine: Engine, positions: dict[tuple[str, str], PositionResult],
            clock: ManualClock) -> None:
    """A chart point of every guarded position: the mark and its margin now."""
    for (account_id, symbol), result in positions.items():
        held = engine.account(account_id).positions[(symbol, "ISOLATED")]
        result.samples.append(Sample(clock.now_ms(), engine.marks[symbol], held.margin))


def run_scenarios(book: Book, paths: Sequence[PricePath], settings: Settings,
                  policies: Sequence[LoadedPolicy], options: RunOptions = RunOptions()
                  ) -> list[ScenarioResult]:  # fmt: skip
    """Every path in turn, each on a fresh engine, guard and audit log."""
    with scratch_folder() as folder:
        template = AuditTemplate(folder)
        return [Scenario(book, path, settings, policies, options).run(template)
                for path in paths]

