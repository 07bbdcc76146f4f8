"""The ledger, fed by the real audit store, on SQLite and PostgreSQL: what the budgets,
cooldowns and net margin added count, across restarts, outages and closed positions."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy import event as sql_event

from guardbot.arbiter import LastAction
from guardbot.audit.errors import AuditUnavailable
from guardbot.audit.ledger import DAY_MS, Ledger, utc_day_start_ms
from guardbot.audit.store import AuditLog, EventKind
from guardbot.clock import ManualClock
from guardbot.domain import ActionKind, MarginMode, PositionKey

from .conftest import ACCOUNT, OTHER, T0, Outage, action

ETH: PositionKey = (ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED)
ADD, REDUCE = ActionKind.ADD, ActionKind.REDUCE


async def open_log(url: str, spool_dir: Path, clock: ManualClock) -> AuditLog:
    log = await AuditLog.open(url, spool_dir, clock=clock, retry_s=0.01)
    await log.start_run("0.1.0", "cafe", "host-1")
    return log


async def record(log: AuditLog, amount: str, *events: EventKind | tuple[EventKind, str],
                 **overrides: object) -> str:
    """An action and its events; an event may carry the ``applied`` of a RECONCILED."""
    action_id = await log.record_action(action(amount=Decimal(amount), **overrides))
    account = str(overrides.get("account_id", ACCOUNT))
    for event in events:
        if isinstance(event, tuple):
            await log.record_event(action_id, account, event[0], detail={"applied": event[1]})
        else:
            await log.record_event(action_id, account, event)
    return action_id


async def closed(log: AuditLog, symbol: str = "PERP_ETH_USDC") -> None:
    await log.record_observation(ACCOUNT, symbol, "position_closed", {"margin_mode": "ISOLATED"})


@pytest.mark.parametrize(
    ("at", "midnight"),
    [("2026-03-05T13:45:00", "2026-03-05T00:00:00"), ("2026-03-05T00:00:00", "2026-03-05T00:00:00"),
     ("2026-03-04T23:59:59.999", "2026-03-04T00:00:00")],
)
def test_the_budget_day_starts_at_utc_midnight(at: str, midnight: str) -> None:
    def ms(text: str) -> int:
        from datetime import UTC, datetime

        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)

    assert utc_day_start_ms(ms(at)) == ms(midnight)


async def test_budget_counts_what_may_have_moved_money(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    ledger = log.ledger
    assert await ledger.added_since(ACCOUNT, 0, T0) == 0
    await record(log, "1", EventKind.SENT, EventKind.SUCCEEDED)
    await record(log, "2", EventKind.SENT, EventKind.UNCERTAIN)  # may have been applied
    await record(log, "4", EventKind.SENT)  # in flight
    await record(log, "8", EventKind.SENT, EventKind.REJECTED)
    await record(log, "16", EventKind.SKIPPED)
    await record(log, "32", EventKind.SENT, EventKind.FAILED)
    await record(log, "64", EventKind.DRY_RUN, dry_run=True)
    await record(log, "128", EventKind.SUCCEEDED, kind=REDUCE)
    await record(log, "256", EventKind.SUCCEEDED, symbol="PERP_BTC_USDC")
    await record(log, "512", EventKind.SUCCEEDED, account_id=OTHER)
    await record(log, "2048", EventKind.UNCERTAIN, (EventKind.RECONCILED, "false"))
    await record(log, "4096", EventKind.UNCERTAIN, (EventKind.RECONCILED, "unknown"))
    clock.advance(1)
    await record(log, "1024", EventKind.SUCCEEDED)
    counted = 1 + 2 + 4 + 256 + 4096 + 1024
    assert await ledger.added_since(ACCOUNT, 0, T0) == Decimal(counted)
    assert await ledger.added_since(ACCOUNT, 0, T0, "PERP_ETH_USDC") == Decimal(counted - 256)
    assert await ledger.added_since(ACCOUNT, T0 + 1, T0) == Decimal(1024)
    assert await ledger.added_since(OTHER, 0, T0) == Decimal(512)
    # every symbol at once, as the live view reads them: the same sums
    assert await ledger.added_by_symbol(ACCOUNT, 0, T0) == {
        "PERP_ETH_USDC": Decimal(counted - 256), "PERP_BTC_USDC": Decimal(256)}
    assert await ledger.added_by_symbol(ACCOUNT, T0 + 1, T0) == {"PERP_ETH_USDC": Decimal(1024)}
    await log.aclose()

    # A restart does not reset a budget: it is derived from the log.
    again = await AuditLog.open(url, spool_dir, clock=clock)
    assert await again.ledger.added_since(ACCOUNT, 0, T0) == Decimal(counted)
    assert await again.ledger.added_since(ACCOUNT, 0, T0, "PERP_BTC_USDC") == Decimal(256)
    await again.aclose()


async def test_budget_counts_spooled_actions_during_an_outage(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    today = T0 - 3_600_000
    await log.record_action(action(amount=Decimal("10")))
    assert await log.ledger.added_since(ACCOUNT, today, T0) == Decimal("10")  # loads
    outage = Outage(log.engine)
    outage.down = True
    await log.record_action(action(amount=Decimal("5")))
    assert await log.ledger.added_since(ACCOUNT, today, T0) == Decimal("15")  # memory
    # An account never asked about needs the database for its first answer.
    with pytest.raises(AuditUnavailable):
        await log.ledger.added_since(OTHER, today, T0)
    outage.down = False
    await log.aclose()


async def test_the_last_action_is_one_that_may_have_moved_money_since_the_position_opened(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    await log.ledger.load(ACCOUNT, T0)
    assert log.ledger.last_action(ETH, 0) is None
    await record(log, "5", EventKind.SUCCEEDED, kind=REDUCE)
    reduced = LastAction(T0, REDUCE)
    assert log.ledger.last_action(ETH, 0) == reduced
    clock.advance(1)
    for events in ([EventKind.SKIPPED], [EventKind.SENT, EventKind.FAILED],
                   [EventKind.SENT, EventKind.REJECTED],
                   [EventKind.UNCERTAIN, (EventKind.RECONCILED, "false")]):
        await record(log, "5", *events)
    assert log.ledger.last_action(ETH, 0) == reduced, "nothing since moved money"
    assert log.ledger.last_action(ETH, T0 + 1) is None, "older than the cooldown"
    clock.advance(1)
    await record(log, "5", EventKind.SENT)  # outcome unknown: it may have moved money
    assert log.ledger.last_action(ETH, 0) == LastAction(T0 + 2000, ADD)
    # In a dry run, dry-run decisions pace the guard (they moved nothing).
    await record(log, "5", EventKind.DRY_RUN, dry_run=True, kind=REDUCE)
    assert log.ledger.last_action(ETH, 0, dry_run=True) == LastAction(T0 + 2000, REDUCE)
    # A position closed and opened again inherits no cooldown.
    clock.advance(1)
    await closed(log)
    assert log.ledger.last_action(ETH, 0) is None
    await log.aclose()
    again = await AuditLog.open(url, spool_dir, clock=clock)  # nor after a restart
    await again.ledger.load(ACCOUNT, clock.now_ms())
    assert again.ledger.last_action(ETH, 0) is None
    await again.aclose()


async def test_net_added_counts_applied_actions_since_the_position_opened(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    await record(log, "100", EventKind.SUCCEEDED)  # before the close: not this position's
    clock.advance(1)
    await closed(log)
    clock.advance(1)
    await record(log, "50", EventKind.SUCCEEDED, EventKind.VERIFIED)
    await record(log, "30", EventKind.UNCERTAIN, (EventKind.RECONCILED, "true"))
    await record(log, "20", EventKind.UNCERTAIN, (EventKind.RECONCILED, "false"))
    await record(log, "7", EventKind.UNCERTAIN)  # unknown: not counted as applied
    await record(log, "9", EventKind.SUCCEEDED, dry_run=True)
    await record(log, "10", EventKind.SUCCEEDED, kind=REDUCE)
    now = clock.now_ms()
    assert await log.ledger.net_added(ETH, now) == Decimal(70)
    await log.aclose()
    # Days later the same actions are older than the ledger's memory: read from the database.
    clock.advance(5 * DAY_MS / 1000)
    again = await AuditLog.open(url, spool_dir, clock=clock)
    assert await again.ledger.net_added(ETH, clock.now_ms()) == Decimal(70)
    await again.aclose()


async def test_a_long_running_ledger_forgets_old_actions(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    await record(log, "3", EventKind.SUCCEEDED, symbol="PERP_BTC_USDC")
    await log.flush(10)
    btc: PositionKey = (ACCOUNT, "PERP_BTC_USDC", MarginMode.ISOLATED)
    assert log.ledger.last_action(btc, 0) == LastAction(T0, ADD)
    clock.advance(5 * DAY_MS / 1000)
    now = clock.now_ms()
    assert await log.ledger.added_since(ACCOUNT, now - DAY_MS, now) == 0
    assert log.ledger.last_action(btc, 0) is None, "pruned: far beyond any cooldown"
    assert await log.ledger.net_added(btc, now) == Decimal(3), "from the database"
    await log.aclose()


async def test_arbiter_state_gathers_one_round(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    log = await open_log(url, spool_dir, clock)
    await record(log, "40", EventKind.SUCCEEDED)
    await record(log, "60", EventKind.SENT, symbol="PERP_BTC_USDC")
    clock.advance(10)
    now = clock.now_ms()
    btc: PositionKey = (ACCOUNT, "PERP_BTC_USDC", MarginMode.ISOLATED)
    state = await log.ledger.arbiter_state(
        ACCOUNT, [ETH, btc], now, cooldown_s=30, free_balance=Decimal(1000),
        balance_read_ms=T0 + 1, blocked=frozenset({btc}), unsettled={btc: 1})
    assert state.added_today_by_account == {ACCOUNT: Decimal(100)}
    assert state.added_today_by_position == {ETH: Decimal(40), btc: Decimal(60)}
    assert state.last_action == {ETH: LastAction(T0, ADD), btc: LastAction(T0, ADD)}
    assert state.free_balance == {ACCOUNT: Decimal(1000)}, "both decided before the read"
    assert (state.blocked, state.unsettled) == (frozenset({btc}), {btc: 1})
    later = await log.ledger.arbiter_state(ACCOUNT, [ETH], now + 30_001, cooldown_s=30,
                                           free_balance=Decimal(1000), balance_read_ms=T0)
    assert later.last_action == {}, "past the cooldown"
    assert later.free_balance == {ACCOUNT: Decimal(900)}, "ADDs since the read are spent"
    await log.aclose()


async def test_the_free_balance_counts_an_add_once(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """A balance read after the exchange confirmed an ADD already shows it: subtracting it
    again halved the next rescue in a fast fall. An ADD still open, or confirmed only after
    the read was asked, may be missing from it: that one is subtracted."""
    log = await open_log(url, spool_dir, clock)
    await record(log, "40", EventKind.SUCCEEDED)  # confirmed at T0
    clock.advance(1)
    read_ms = clock.now_ms()  # the poll asked after the confirmation: it shows the 40
    await record(log, "25", EventKind.SENT)  # on the wire when the poll was asked
    clock.advance(1)
    await record(log, "10", EventKind.SUCCEEDED)  # confirmed after the poll was asked
    state = await log.ledger.arbiter_state(
        ACCOUNT, [ETH], clock.now_ms(), cooldown_s=0, free_balance=Decimal(1000),
        balance_read_ms=read_ms, settle_window_ms=11_000)
    assert state.free_balance == {ACCOUNT: Decimal(965)}
    await log.aclose()


def test_an_uncertain_add_older_than_the_window_still_counts_against_a_later_read() -> None:
    """Decided at 0, uncertain at 2 s, it may land until its settle window after that: a
    balance asked at 12 s that does not show it yet must not be taken at face value."""
    ledger = Ledger()
    ledger.note({"t": "action", "id": "a", "account_id": ACCOUNT, "symbol": "PERP_ETH_USDC",
                 "margin_mode": "ISOLATED", "kind": "ADD", "amount": "500", "time_ms": 0,
                 "dry_run": False})
    ledger.note({"t": "event", "account_id": ACCOUNT, "action_id": "a", "kind": "UNCERTAIN",
                 "detail": None, "time_ms": 2_000})
    assert ledger.added_after_read(ACCOUNT, 12_000, 11_000) == Decimal(500)
    ledger.note({"t": "event", "account_id": ACCOUNT, "action_id": "a", "kind": "RECONCILED",
                 "detail": {"applied": "true"}, "time_ms": 13_000})
    assert ledger.added_after_read(ACCOUNT, 30_000, 11_000) == 0, "settled long before"


async def test_a_ledger_with_no_history_counts_what_it_is_fed() -> None:
    """The backtest's ledger: no database, everything from the records it is fed."""
    ledger = Ledger()
    ledger.note({"t": "action", "id": "a", "account_id": ACCOUNT, "symbol": "PERP_ETH_USDC",
                 "margin_mode": "ISOLATED", "kind": "ADD", "amount": "12.5", "time_ms": T0,
                 "dry_run": False})
    undo = ledger.note({"t": "event", "action_id": "a", "account_id": ACCOUNT,
                        "kind": "SUCCEEDED", "detail": None})
    assert await ledger.net_added(ETH, T0) == Decimal("12.5")
    assert undo is not None
    undo()  # the event never became durable
    assert await ledger.net_added(ETH, T0) == 0
    assert await ledger.added_since(ACCOUNT, 0, T0) == Decimal("12.5")


async def test_a_dry_run_counts_its_shadow_and_a_live_guard_never_does(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """What a dry run would have sent counts in a dry run's budgets, margin and free balance
    (so it decides as live would, and never repeats an ADD live would see applied), and
    nowhere in a live guard's: the live round is the same with or without dry runs logged."""
    log = await open_log(url, spool_dir, clock)
    ledger = log.ledger
    btc: PositionKey = (ACCOUNT, "PERP_BTC_USDC", MarginMode.ISOLATED)
    await record(log, "40", EventKind.SENT, EventKind.SUCCEEDED)  # a real top-up
    clock.advance(1)

    async def live_round() -> object:
        return await ledger.arbiter_state(ACCOUNT, [ETH, btc], clock.now_ms(), cooldown_s=30,
                                          free_balance=Decimal(1000), balance_read_ms=T0 + 1)

    before = await live_round()
    await record(log, "100", EventKind.DRY_RUN, dry_run=True)  # would have been sent
    await record(log, "30", EventKind.DRY_RUN, dry_run=True, kind=REDUCE)
    await record(log, "7", dry_run=True)  # still queued: counts, as an ADD on the wire would
    await record(log, "500", EventKind.FAILED, dry_run=True)  # not sent (stale): counts not
    await record(log, "9", EventKind.DRY_RUN, dry_run=True, symbol="PERP_BTC_USDC")
    clock.advance(1)
    assert await live_round() == replace(before, now_ms=clock.now_ms()), "live: unchanged"
    assert await ledger.added_since(ACCOUNT, 0, clock.now_ms()) == Decimal(40)

    effects = await ledger.dry_run_effects(ACCOUNT, [ETH, btc], clock.now_ms())
    assert effects == {ETH: Decimal(100 - 30 + 7), btc: Decimal(9)}
    dry = await ledger.arbiter_state(
        ACCOUNT, [ETH, btc], clock.now_ms(), cooldown_s=0, free_balance=Decimal(1000),
        balance_read_ms=clock.now_ms(), dry_run=True, dry_run_effects=effects)
    assert dry.added_today_by_account == {ACCOUNT: Decimal(40 + 100 + 7 + 9)}
    assert dry.added_today_by_position == {ETH: Decimal(147), btc: Decimal(9)}
    assert dry.free_balance == {ACCOUNT: Decimal(1000 - 77 - 9)}
    await log.aclose()

    # A restart keeps the shadow (it is in the log); a close resets it.
    again = await AuditLog.open(url, spool_dir, clock=clock)
    assert await again.ledger.dry_run_effects(ACCOUNT, [ETH, btc], clock.now_ms()) == effects
    clock.advance(1)
    await closed(again)
    assert await again.ledger.dry_run_effects(ACCOUNT, [ETH, btc], clock.now_ms()) == {
        btc: Decimal(9)}
    await again.aclose()


class HeldReads:
    """Holds the first read of the ``actions`` table after ``arm`` until ``release``: a
    slow database, so that what the event loop does meanwhile is fixed, not left to the
    thread pool's timing."""

    def __init__(self, engine: Engine) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.released = threading.Event()
        sql_event.listen(engine, "before_cursor_execute", self._hold)

    def _hold(self, connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if self.armed and statement.lstrip().upper().startswith("SELECT") and (
                "actions" in statement):
            self.armed = False
            self.entered.set()
            self.released.wait(10)


async def test_a_close_during_a_read_of_older_history_does_not_pass_it_to_the_next_position(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """A position was topped up by 100 five days ago (older than the ledger's memory: its
    net margin added is read from the database, in a thread). While that read is out (the
    guard warms the ledger in the background when it first sees a position,
    ``Guard._warm``), the position closes: the guard tells the ledger at once
    (``position_closed``). The read then answers with the old position's 100 and the
    ledger keeps it as the *next* position's older history: a position reopened on the
    symbol starts with a net margin added of 100 that the guard never added to it, so its
    ``original_margin`` is 100 too low and a plugin sweeping down to it
    (strategies/profit_sweep.py) takes 100 of the owner's own margin. Fails at be52cc5."""
    log = await open_log(url, spool_dir, clock)
    await record(log, "100", EventKind.SENT, EventKind.SUCCEEDED)
    await log.aclose()
    clock.advance(5 * DAY_MS / 1000)
    again = await AuditLog.open(url, spool_dir, clock=clock)
    ledger = again.ledger
    now = clock.now_ms()
    assert await ledger.added_since(ACCOUNT, now - DAY_MS, now) == 0  # the account is loaded
    held = HeldReads(again.engine)
    held.armed = True
    warm = asyncio.create_task(ledger.net_added(ETH, now))
    assert await asyncio.to_thread(held.entered.wait, 10), "the older history is being read"
    ledger.position_closed(ACCOUNT, ETH[1], now)  # the guard saw it close meanwhile
    held.released.set()
    assert await warm == Decimal(100), "the closed position's own history"
    clock.advance(1)
    # reopened: nothing has been added to this one
    assert await ledger.net_added(ETH, clock.now_ms()) == 0
    await again.aclose()


async def test_a_second_question_while_the_history_loads_waits_for_it(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """After a restart the account's history (an ADD of 100 today) is being read, in a
    thread, for one caller (``Guard._warm`` when a position is first seen, the live view,
    the housekeeping's gauges); a round deciding meanwhile asks the ledger too. ``load``
    marks the account loaded before its read answers, so that round is answered from an
    empty ledger: nothing added today, no last action. Its daily budgets and cooldowns
    ignore everything done before the restart. Fails at be52cc5."""
    log = await open_log(url, spool_dir, clock)
    await record(log, "100", EventKind.SENT, EventKind.SUCCEEDED)
    await log.aclose()
    clock.advance(60)
    again = await AuditLog.open(url, spool_dir, clock=clock)
    ledger = again.ledger
    now = clock.now_ms()
    held = HeldReads(again.engine)
    held.armed = True
    first = asyncio.create_task(ledger.net_added(ETH, now))  # the warm-up's read
    assert await asyncio.to_thread(held.entered.wait, 10), "the history is being read"
    second = asyncio.create_task(ledger.added_since(ACCOUNT, now - DAY_MS, now))
    for _ in range(20):
        await asyncio.sleep(0)
    held.released.set()
    assert await second == Decimal(100), "the round's budget counts the ADD before the restart"
    assert await first == Decimal(100)
    await again.aclose()


async def test_a_read_of_the_history_cancelled_midway_leaves_the_account_unread(
    url: str, spool_dir: Path, clock: ManualClock
) -> None:
    """After a restart the account's history (an ADD of 100 today) is being read for one
    caller, and that caller is cancelled while the read is out (a task of the live view or
    a stream's consumer stopped, a sibling failing in its task group). ``load`` marks the
    account read before its read answers and un-marks it only on a database error, so the
    cancelled read leaves it marked with nothing merged: every later question (the rounds'
    budgets, cooldowns, net margin added) is answered from an empty ledger, for the life of
    the process. Fails at 946493d."""
    log = await open_log(url, spool_dir, clock)
    await record(log, "100", EventKind.SENT, EventKind.SUCCEEDED)
    await log.aclose()
    clock.advance(60)
    again = await AuditLog.open(url, spool_dir, clock=clock)
    ledger = again.ledger
    now = clock.now_ms()
    held = HeldReads(again.engine)
    held.armed = True
    first = asyncio.create_task(ledger.added_since(ACCOUNT, now - DAY_MS, now))
    assert await asyncio.to_thread(held.entered.wait, 10), "the history is being read"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    held.released.set()
    assert await ledger.added_since(ACCOUNT, now - DAY_MS, now) == Decimal(100), (
        "the next question reads the history again")
    assert await ledger.net_added(ETH, now) == Decimal(100)
    await again.aclose()
