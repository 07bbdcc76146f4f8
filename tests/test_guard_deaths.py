"""The guard's record of deaths, found by an adversarial review of the first version of
liquidation records (each test failed on it): finding a close's cause never holds up the
account's rescues, a liquidation is attributed only to the position it can be (symbol,
size, the exchange's clock, newest first), a cross close is no guarded death, a liquidation
reported late is still recorded at the time of its close, a standby instance records
nothing, and ``guardbot audit why`` tells what the guard did and never shows a traceback.
Driven like tests/test_guard.py: a ManualClock shared with a real SQLite audit log
(``timed_audit``), the shipped FakeExchange; the executor's workers do not run, so an
approved action stays queued and is read back from the audit log.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path

import pytest
from click.testing import CliRunner
from factories import ACCOUNT, ALT_RULES, LONG
from sqlalchemy import select
from test_guard import FAR, Harness, queued

from guardbot import cli
from guardbot import guard as guard_module
from guardbot.alerts import AlertKind
from guardbot.audit import postmortem
from guardbot.audit.records import ActionRecord, EventKind
from guardbot.audit.store import AuditLog
from guardbot.audit.tables import Observation
from guardbot.clock import ManualClock
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Liquidation,
    MarginMode,
    Position,
    Source,
    SymbolRules,
)
from guardbot.exchange.errors import Rejected
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import LiquidationsPushed, PositionsPushed
from guardbot.guard import Guard
from guardbot.policies.topup import TopUp

ALT = ALT_RULES.symbol
OTHER_RULES = SymbolRules("PERP_OTH_USDC", base_imr=D("0.1"), base_mmr=D("0.05"),
                          imr_factor=D(0))
OTH = OTHER_RULES.symbol
START = 1_700_000_000_000
# 1.1 % from liquidation (liquidates at 98.95 with mark 100): TopUp wants to add.
DANGER = replace(LONG, margin=D(60))


def fake_of(harness: Harness) -> FakeExchange:
    fake = harness.guard.exchanges[ACCOUNT]
    assert isinstance(fake, FakeExchange)
    return fake


# -- deaths: liquidations, closes and margin moved by others -----------------------------------




async def observations(audit: AuditLog, kind: str, guard: Guard | None = None
                       ) -> list[dict[str, str]]:  # fmt: skip
    """The details of the observations of ``kind``, oldest first, from the database, once
    ``guard`` recorded every close it saw."""
    if guard is not None:
        await guard.recorded()
    await audit.flush()
    with audit.engine.connect() as connection:
        rows = connection.execute(select(Observation).where(Observation.kind == kind)
                                  .order_by(Observation.time))
        return [dict(row.detail) for row in rows]


def gone(position: Position, now: int) -> Position:
    """``position``'s update once it is closed (quantity 0)."""
    return replace(position, qty=D(0), margin=D(0), seq=(position.seq or 0) + 1,
                   exchange_ms=now, received_ms=now, source=Source.WS)


async def test_a_liquidated_position_is_recorded_as_a_liquidation_with_the_guards_last_words(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The guard wanted to top up but its daily budget was spent; the exchange liquidates
    the position. The record is a ``position_liquidated`` with the exchange's data, how the
    guard last saw the position and its refusal; ``audit why`` names the refusal."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    harness.guard.arbiter.budgets = harness.guard.settings.budgets.model_copy(
        update={"per_position_per_day": D(5), "min_amount": D(10)})
    fake = fake_of(harness)
    danger = replace(LONG, margin=D(60))  # 1.1 % from liquidation: topup wants to add
    await harness.snapshot(ACCOUNT, danger)
    assert await queued(audit, ACCOUNT) == [], "refused: the budget is spent"
    clock.advance(1)
    fake.set_position(danger)
    fake.liquidate(ALT, D("98.9"))
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(danger, clock.now_ms()),)))

    assert await observations(audit, "position_closed", harness.guard) == []
    [record] = await observations(audit, "position_liquidated", harness.guard)
    assert record["liquidation_id"] == "1" and record["transfer_price"] == "98.9"
    assert record["last_margin"] == "60" and "last_liquidation_price" in record
    notes = json.loads(record["guard_last"])
    assert any("refused (budget)" in note["what"] for note in notes), notes
    [death] = postmortem.deaths(audit.engine)
    assert "last refusal" in death.verdict and "budget" in death.verdict, death.verdict
    assert [a["status"] for a in death.actions] == ["SKIPPED"]
    assert [a.kind for a in harness.alerts if a.kind is AlertKind.LIQUIDATION]


async def test_a_position_closed_by_its_owner_is_a_close_not_a_liquidation(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.snapshot(ACCOUNT)  # no longer listed, and no liquidation on record
    [record] = await observations(audit, "position_closed", harness.guard)
    assert "cause_unknown" not in record and record["last_margin"] == "200"
    assert await observations(audit, "position_liquidated", harness.guard) == []
    assert postmortem.deaths(audit.engine) == []


async def test_a_liquidation_pushed_after_an_unexplained_close_is_still_recorded(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The liquidations cannot be read when the position disappears: the close is recorded
    with its cause unknown, and the ``liquidationsaccount`` push that comes later records
    the liquidation (once, though the push repeats)."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    fake.set_position(FAR)
    liquidation = fake.liquidate(ALT, D(84))
    fake.read_failure = lambda: Rejected(-1000, "unknown error", 500)
    clock.advance(1)
    await harness.snapshot(ACCOUNT)
    [closed] = await observations(audit, "position_closed", harness.guard)
    assert closed["cause_unknown"].startswith("liquidations not readable")
    for _ in range(2):
        await harness.guard.on_event(ACCOUNT, LiquidationsPushed((liquidation,)))
    [record] = await observations(audit, "position_liquidated", harness.guard)
    assert record["recorded_after_close"] == "true" and record["transfer_price"] == "84"


async def test_a_liquidation_pushed_first_explains_the_close_that_follows(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    pushed = Liquidation(ACCOUNT, 9, clock.now_ms(), ALT, D(10), D(84), None, None)
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((pushed,)))
    assert await observations(audit, "position_liquidated", harness.guard) == [], (
        "not until it is gone")
    fake = fake_of(harness)
    fake.read_failure = lambda: Rejected(-1000, "unknown error", 500)  # the push alone tells
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    [record] = await observations(audit, "position_liquidated", harness.guard)
    assert record["liquidation_id"] == "9"


async def test_margin_moved_by_someone_else_is_an_observation_not_the_guards(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The owner adds 50 by hand: recorded as ``margin_changed_by_others``; the guard's
    net margin added stays 0, so neither the budgets nor a later sweep count it."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.snapshot(ACCOUNT, replace(FAR, margin=D(250), seq=(FAR.seq or 0) + 1))
    [record] = await observations(audit, "margin_changed_by_others", harness.guard)
    assert (record["margin_before"], record["margin_after"], record["change"]) == (
        "200", "250", "50")
    assert await harness.guard.ledger.net_added(FAR.key, clock.now_ms()) == 0
    clock.advance(1)
    filled = replace(FAR, qty=D(20), margin=D(400), seq=(FAR.seq or 0) + 2)
    await harness.snapshot(ACCOUNT, filled)
    moves = await observations(audit, "margin_changed_by_others", harness.guard)
    assert len(moves) == 1, "a fill is not"


async def test_a_liquidation_read_that_hangs_holds_the_account_up_only_briefly(
    timed_audit: AuditLog, guard_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exchange does not answer ``GET /v1/liquidations`` (a crash, an overloaded API):
    the close is recorded with its cause unknown after ``LIQUIDATION_READ_S`` instead of
    stalling the account's stream for the client's whole timeout."""
    monkeypatch.setattr(guard_module, "LIQUIDATION_READ_S", 0.05)
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)

    async def hang(since_ms: int) -> tuple[Liquidation, ...]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(fake, "get_liquidations", hang)
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await asyncio.wait_for(harness.snapshot(ACCOUNT), 2)
    [closed] = await observations(audit, "position_closed", harness.guard)
    assert closed["cause_unknown"] == "liquidations not read within 0.05 s"


async def test_the_guards_own_top_up_is_never_someone_elses_move(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """A top-up goes out and lands between two snapshots (no snapshot saw it on the wire):
    the snapshot that shows it is the guard's own move, not ``margin_changed_by_others``."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)  # the margin before: 200
    settlement = harness.guard.executor.settlement
    settlement.sent("a1", FAR.key, ActionKind.ADD, D(50), D(200), FAR.qty, clock.now_ms())
    settlement.succeeded("a1", clock.now_ms())
    clock.advance(1)
    # Shows it: verified, and nothing unsettled is left once it is.
    await harness.snapshot(ACCOUNT, replace(FAR, margin=D(250), seq=(FAR.seq or 0) + 1))
    assert settlement.unsettled(FAR.key) == 0
    clock.advance(1)
    await harness.snapshot(ACCOUNT, replace(FAR, margin=D(250), seq=(FAR.seq or 0) + 2))
    assert await observations(audit, "margin_changed_by_others", harness.guard) == []


async def liquidated_and_pushed(harness: Harness, fake: FakeExchange, clock: ManualClock,
                                audit: AuditLog) -> None:  # fmt: skip
    """A second later the exchange liquidates ``DANGER`` at 98.9 and pushes it gone; the
    guard has recorded the death and the audit log holds it."""
    fake.set_position(DANGER)
    fake.liquidate(ALT, D("98.9"))
    clock.advance(1)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(DANGER, clock.now_ms()),)))
    await harness.guard.recorded()
    await audit.flush()


def slow_liquidations(monkeypatch: pytest.MonkeyPatch, fake: FakeExchange
                      ) -> tuple[asyncio.Event, asyncio.Event]:  # fmt: skip
    """``GET /v1/liquidations`` on ``fake`` answers nothing until ``release`` is set;
    ``entered`` is set once it is asked."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(since_ms: int) -> tuple[Liquidation, ...]:
        entered.set()
        await release.wait()
        return ()

    monkeypatch.setattr(fake, "get_liquidations", slow)
    return entered, release


def unreadable() -> Rejected:
    return Rejected(-1000, "unknown error", 500)


def cross_liquidation(liquidation_id: int, at_ms: int, qty: D = D(3)) -> Liquidation:
    """The account's CROSS position on ALT taken over (the exchange does not say cross)."""
    return Liquidation(ACCOUNT, liquidation_id, at_ms, ALT, qty, D(90), D(0), D(0))


# -- 1. the liquidation read holds up the rescue of the account's other positions ---------


async def test_a_close_does_not_hold_up_the_rescue_of_a_sibling_in_the_same_snapshot(
    timed_audit: AuditLog, guard_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a crash one isolated position is liquidated and, in the same snapshot, another of
    the account is 1.1 % from liquidation. The guard must queue the sibling's top-up without
    waiting for ``GET /v1/liquidations`` (slow in a crash: up to LIQUIDATION_READ_S, 2 s).
    The first version failed: ``on_snapshot`` (and the push handler) awaits ``closed()``
    -- and with it the REST read -- for every position that left before ``evaluate``
    looks at the others."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()], rules=(ALT_RULES, OTHER_RULES))
    fake = fake_of(harness)
    entered, release = slow_liquidations(monkeypatch, fake)
    await harness.snapshot(ACCOUNT, FAR, replace(FAR, symbol=OTH))
    clock.advance(1)
    update = asyncio.create_task(
        harness.snapshot(ACCOUNT, replace(DANGER, symbol=OTH, seq=2)))
    await asyncio.wait_for(entered.wait(), 5)
    # The update is handled (the sibling decided) while the read still hangs.
    await asyncio.wait_for(asyncio.shield(update), 5)
    rescues = [(symbol, kind) for symbol, kind, _, _ in await queued(audit, ACCOUNT)]
    release.set()
    await update
    assert rescues == [(OTH, "ADD")], (
        "the sibling's top-up waited for the liquidation read of the position that left")


async def test_several_closes_in_one_update_hold_the_account_up_no_longer_than_the_bound(
    timed_audit: AuditLog, guard_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """7e3023b promises that a hanging liquidation read holds the account's stream or poll up for at
    most LIQUIDATION_READ_S. The first version failed: the bound is per closed position and the
    reads run one after another, so a crash that takes 4 positions at once (a cross liquidation
    closes all of an account's cross positions, each of which also goes through ``closed()``) holds
    the account up 4 x LIQUIDATION_READ_S (8 s with the default)."""
    monkeypatch.setattr(guard_module, "LIQUIDATION_READ_S", 0.05)
    symbols = ("PERP_A_USDC", "PERP_B_USDC", "PERP_C_USDC", "PERP_D_USDC")
    rules = [replace(ALT_RULES, symbol=s) for s in symbols]
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()], rules=rules)
    fake = fake_of(harness)

    async def hang(since_ms: int) -> tuple[Liquidation, ...]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(fake, "get_liquidations", hang)
    await harness.snapshot(ACCOUNT, *(replace(FAR, symbol=s) for s in symbols))
    clock.advance(1)
    started = time.monotonic()
    await asyncio.wait_for(harness.snapshot(ACCOUNT), 5)
    held_s = time.monotonic() - started
    assert len(await observations(audit, "position_closed", harness.guard)) == 4
    assert held_s < 2 * guard_module.LIQUIDATION_READ_S, (
        f"one update held the account {held_s:.2f} s, "
        f"bound {guard_module.LIQUIDATION_READ_S} s")


async def test_a_cross_position_leaving_the_book_is_not_a_guarded_death(
    timed_audit: AuditLog, guard_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The account's CROSS position on ALT is liquidated and its push shows it gone. The guard never
    guards cross positions. The first version failed: ``_on_event`` calls ``closed()`` for any
    position of the book that closes, cross included, so it reads the liquidations inside the
    private push handler (holding up the isolated positions' pushes in exactly the crash where they
    need rescue), records a ``position_liquidated`` with margin_mode CROSS (``audit why`` lists it
    as a guarded position that died, the alert says "isolated position liquidated"), and the
    ledger's close marker, kept per symbol, restarts the ISOLATED position's cooldown and net margin
    added."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    reads: list[int] = []
    real = fake.get_liquidations

    async def counted(since_ms: int) -> tuple[Liquidation, ...]:
        reads.append(since_ms)
        return await real(since_ms)

    monkeypatch.setattr(fake, "get_liquidations", counted)
    cross = replace(FAR, margin_mode=MarginMode.CROSS, qty=D(3), cost_position=D(300),
                    margin=D(0))
    await harness.snapshot(ACCOUNT, FAR, cross)
    clock.advance(1)
    fake.liquidations.append(cross_liquidation(1, clock.now_ms()))
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(cross, clock.now_ms()),)))
    assert await observations(audit, "position_liquidated", harness.guard) == [], (
        "not a guarded position")
    assert reads == [], "the private push handler read the liquidations for a cross close"


# -- 2. a liquidation attributed to the wrong position ----------------------------------------


async def test_a_cross_liquidation_on_the_symbol_does_not_explain_the_owner_closing_isolated(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The account's cross position on ALT (qty 3) is liquidated; 30 s later the owner, in a hurry,
    closes the isolated ALT position (qty 10) himself. The first version failed: ``_explains`` only
    compares the symbol and the time (60 s slack), so the owner's close is recorded as
    ``position_liquidated`` with the cross position's liquidation id, qty and price -- a death that
    did not happen, and ``audit why`` explains it. The liquidation's ``position_qty`` (3, not 10)
    tells them apart."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(10)
    fake.liquidations.append(cross_liquidation(1, clock.now_ms()))
    clock.advance(20)
    await harness.snapshot(ACCOUNT, replace(FAR, seq=2))
    clock.advance(10)
    await harness.snapshot(ACCOUNT)  # the owner closed it: no longer listed
    assert await observations(audit, "position_liquidated", harness.guard) == []
    assert len(await observations(audit, "position_closed", harness.guard)) == 1


async def test_the_pushed_liquidation_of_the_isolated_position_wins_over_an_older_cross_one(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """Both liquidations of the crash are pushed before the isolated position's update: the cross
    position's (id 7, qty 3) first, then the isolated one's (id 8, qty 10). The first version
    failed: the guard takes the first pushed liquidation on the symbol (oldest first), so the
    isolated position's record carries the cross liquidation's id, qty and price, and its own
    liquidation is never recorded."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.guard.on_event(
        ACCOUNT, LiquidationsPushed((cross_liquidation(7, clock.now_ms()),)))
    clock.advance(2)
    isolated = Liquidation(ACCOUNT, 8, clock.now_ms(), ALT, D(10), D(84), D(0), D(0))
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((isolated,)))
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    [record] = await observations(audit, "position_liquidated", harness.guard)
    assert (record["liquidation_id"], record["qty"], record["transfer_price"]) == (
        "8", "10", "84")


async def test_a_close_of_unknown_cause_is_not_explained_by_a_liquidation_an_hour_later(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The liquidations cannot be read when the owner closes the isolated ALT position: the close is
    recorded with its cause unknown. An hour later the account's cross ALT position is liquidated
    and pushed. The first version failed: ``_unexplained`` never expires and ``_explains`` has no
    upper time bound, so the hour-old close is re-recorded as ``position_liquidated`` with the cross
    liquidation's data (and, being a close marker, it restarts the ledger of whatever isolated ALT
    position is open now)."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    fake.read_failure = unreadable
    clock.advance(1)
    await harness.snapshot(ACCOUNT)
    [closed] = await observations(audit, "position_closed", harness.guard)
    assert "cause_unknown" in closed
    fake.read_failure = None
    clock.advance(3600)
    await harness.guard.on_event(
        ACCOUNT, LiquidationsPushed((cross_liquidation(5, clock.now_ms()),)))
    assert await observations(audit, "position_liquidated", harness.guard) == []


async def test_a_liquidation_the_rest_read_did_not_list_yet_is_still_recorded_when_pushed(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """docs/exchange.md 6.8: whether the ``liquidationsaccount`` push comes before or after the
    ``position`` push is unconfirmed (the simulator sends the position first). When the position
    update comes first and ``GET /v1/liquidations`` does not list the liquidation yet, the guard
    records ``position_closed`` with no doubt attached. The first version failed: the push that
    follows a second later is only kept in memory; the liquidation is never recorded and the audit
    log says the owner closed a position the exchange liquidated."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    liquidated_ms = clock.now_ms()
    clock.advance(1)
    liquidation = Liquidation(ACCOUNT, 3, liquidated_ms, ALT, D(10), D(84), D(0), D(0))
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((liquidation,)))
    records = await observations(audit, "position_liquidated", harness.guard)
    assert [r["liquidation_id"] for r in records] == ["3"]


# -- 3. the late record moves the ledger's close marker and hides the guard's work -----------


async def test_a_late_liquidation_record_does_not_restart_a_reopened_positions_ledger(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The first ALT position is liquidated while the liquidations cannot be read (position_closed,
    cause unknown). The owner reopens on ALT, the guard tops the new position up, and then the push
    about the FIRST position's liquidation arrives. The first version failed:
    ``_liquidations_pushed`` records ``position_liquidated`` now, and the ledger takes every such
    record as the symbol's close (CLOSES): the reopened position's top-up is forgotten, so its
    cooldown restarts and its net margin added drops to 0, though it is the same, still-open
    position."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    fake.set_position(FAR)
    liquidation = fake.liquidate(ALT, D(84))
    fake.read_failure = unreadable
    clock.advance(1)
    await harness.snapshot(ACCOUNT)
    clock.advance(2)
    reopened = replace(DANGER, seq=5)
    await harness.snapshot(ACCOUNT, reopened)
    assert [(s, k) for s, k, _, _ in await queued(audit, ACCOUNT)] == [(ALT, "ADD")]
    ledger = harness.guard.ledger
    assert ledger.last_action(reopened.key, 0) is not None
    clock.advance(2)
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((liquidation,)))
    assert ledger.last_action(reopened.key, 0) is not None, (
        "the open position's top-up no longer counts for its cooldown")


async def test_audit_why_of_a_liquidation_recorded_after_its_close_shows_what_the_guard_did(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The guard decided a top-up on the position, which was then liquidated while the
    liquidations could not be read; the push records the liquidation after the close.
    The first version failed: ``postmortem.deaths`` starts the position at the latest
    close before the record -- the same position's own ``position_closed`` -- so ``audit
    why`` shows no action on it, and the late record carries no ``guard_last`` (the trail
    went into the close record): "the guard never acted" / "none since it started", though
    it did."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, DANGER)
    assert [(s, k) for s, k, _, _ in await queued(audit, ACCOUNT)] == [(ALT, "ADD")]
    fake.set_position(DANGER)
    liquidation = fake.liquidate(ALT, D("98.9"))
    fake.read_failure = unreadable
    clock.advance(1)
    await harness.snapshot(ACCOUNT)
    await harness.guard.recorded()  # the close is recorded (cause unknown) before the push
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((liquidation,)))
    await audit.flush()
    [death] = postmortem.deaths(audit.engine)
    # Recorded at the time of the position's own close, which it explains.
    assert len(await observations(audit, "position_closed", harness.guard)) == 1
    assert death.detail["recorded_after_close"] == "true"
    assert [a["kind"] for a in death.actions] == ["ADD"], death.actions
    assert death.guard_last, "the guard's decision on the position is lost"
    assert "never acted" not in death.verdict, death.verdict


# -- 4. guardbot audit why ---------------------------------------------------------------------


def _record(kind: ActionKind, amount: D) -> ActionRecord:
    return ActionRecord(
        account_id=ACCOUNT, symbol=ALT, margin_mode=MarginMode.ISOLATED, policy="topup",
        kind=kind, amount=amount, reason="distance below trigger", dry_run=False,
        mark_price=D(100), margin=D(60), qty=D(10), liquidation_price=D("98.95"),
        distance=D("0.011"), data_age_ms=100, source=Source.REST)


async def test_audit_why_does_not_say_the_guard_never_acted_when_its_top_up_was_lost(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The classic crash: the guard sends a top-up, the overloaded exchange does not answer
    (UNCERTAIN), the position is liquidated. The first version failed: ``explain`` counts only
    applied ADDs and SKIPPED refusals, so the verdict reads "the guard never acted; ..." while the
    audit log holds the guard's sent top-up whose outcome is unknown."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, DANGER)
    [action] = await audit.unfinished_actions([ACCOUNT])
    await audit.record_event(action.action_id, ACCOUNT, EventKind.SENT)
    await audit.record_event(action.action_id, ACCOUNT, EventKind.UNCERTAIN,
                             message="read timeout after the request was sent")
    await liquidated_and_pushed(harness, fake, clock, audit)
    [death] = postmortem.deaths(audit.engine)
    assert [a["status"] for a in death.actions] == ["UNCERTAIN"]
    assert "never acted" not in death.verdict and "no decision" not in death.verdict, (
        death.verdict)


async def test_audit_why_counts_every_top_up_of_a_long_lived_position(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """Five top-ups of 20 landed, then the budget ran out and the refusal was recorded once a minute
    for an hour (60 SKIPPED actions) before the position died. The first version failed: ``deaths``
    reads at most ACTIONS_SHOWN (50) actions, newest first, and sums the applied ADDs of those only:
    "the guard added" says 0 (and the verdict omits the 100 USDC the guard put in), though
    ``guard_net_added`` in the same record says 100."""
    audit, clock = timed_audit, guard_clock
    for _ in range(5):
        action_id = await audit.record_action(_record(ActionKind.ADD, D(20)))
        await audit.record_event(action_id, ACCOUNT, EventKind.SENT)
        await audit.record_event(action_id, ACCOUNT, EventKind.SUCCEEDED, latency_ms=50)
    for _ in range(60):
        action_id = await audit.record_action(_record(ActionKind.ADD, D(20)))
        await audit.record_event(action_id, ACCOUNT, EventKind.SKIPPED,
                                 message="budget: per position per day spent")
    clock.advance(1)
    await audit.record_observation(ACCOUNT, ALT, "position_liquidated", {
        "margin_mode": "ISOLATED", "guard_last": "[]", "liquidation_id": "1",
        "transfer_price": "98.9", "guard_net_added": "100"})
    await audit.flush()
    [death] = postmortem.deaths(audit.engine)
    assert death.added == D(100), death.verdict


async def test_audit_why_json_prints_a_death_with_actions(
    timed_audit: AuditLog, guard_clock: ManualClock, tmp_path: Path,
) -> None:
    """``guardbot audit why --format json`` for a liquidated position the guard acted on.
    The first version failed: ``_plain`` converts Decimals and datetimes inside dicts but
    not inside lists, and ``as_dict`` holds the actions as a list of rows with a ``time``
    and an ``amount``: ``json.dumps`` raises TypeError, a traceback instead of the answer."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, DANGER)
    await liquidated_and_pushed(harness, fake, clock, audit)
    url = f"sqlite:///{tmp_path / 'timed.db'}"
    result = CliRunner().invoke(cli.main, ["audit", "why", "--db", url, "--format", "json",
                                             "--since", "2023-01-01"])
    assert result.exception is None, repr(result.exception)
    assert result.exit_code == 0, result.output
    [death] = json.loads(result.output)
    assert [a["kind"] for a in death["actions"]] == ["ADD"]


# -- 5. margin_changed_by_others ------------------------------------------------------------------


async def test_the_guards_own_top_up_landing_after_a_fill_is_not_someone_elses(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """A top-up of 50 is on the wire when a fill doubles the position (settlement gives up on
    reading its effect: the call becomes an orphan, settled when it answers). It answers "done";
    a poll asked just before it landed still shows the fill's margin (400), and then the push of
    the landed top-up shows 450. The first version failed: that poll sets the baseline (400,
    with the call already counted), so the guard's own +50 is recorded as
    ``margin_changed_by_others``."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    await harness.snapshot(ACCOUNT, FAR)
    settlement = harness.guard.executor.settlement
    settlement.sent("a1", FAR.key, ActionKind.ADD, D(50), D(200), FAR.qty, clock.now_ms())
    clock.advance(1)
    now = clock.now_ms()
    filled = replace(FAR, qty=D(20), cost_position=D(2000), margin=D(400), seq=2,
                     exchange_ms=now, received_ms=now, source=Source.WS)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((filled,)))
    settlement.succeeded("a1", clock.now_ms())
    clock.advance(1)
    await harness.snapshot(ACCOUNT, filled)  # the same version (seq 2): asked before landing
    clock.advance(1)
    now = clock.now_ms()
    landed: Position = replace(filled, margin=D(450), seq=3, exchange_ms=now,
                               received_ms=now, source=Source.WS)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((landed,)))
    assert await observations(audit, "margin_changed_by_others", harness.guard) == []


# -- 6. the close record now comes after the read; the 60 s slack and clock skew ---------------


async def test_a_position_reopened_during_the_liquidation_read_keeps_its_top_up(
    timed_audit: AuditLog, guard_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The private push shows the ALT position gone; while the guard waits for ``GET
    /v1/liquidations`` (up to 2 s in a crash), the owner's bot reopens on ALT and a poll shows
    it 1.1 % from liquidation: the guard tops it up. The first version failed: the close record
    is written only once the read is over, so its time (the ledger's close marker for the
    symbol) comes after the new position's top-up, which stops counting for its cooldown and net
    margin added (before db08108 the close was recorded at once)."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    entered, release = slow_liquidations(monkeypatch, fake)
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    close = asyncio.create_task(harness.guard.on_event(
        ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),))))
    await asyncio.wait_for(entered.wait(), 5)
    clock.advance(1)
    reopened = replace(DANGER, seq=5)
    await harness.snapshot(ACCOUNT, reopened)
    assert [(s, k) for s, k, _, _ in await queued(audit, ACCOUNT)] == [(ALT, "ADD")]
    ledger = harness.guard.ledger
    assert ledger.last_action(reopened.key, 0) is not None
    release.set()
    await close
    assert ledger.last_action(reopened.key, 0) is not None, (
        "the open position's top-up was wiped by the previous position's late close record")


async def test_a_liquidation_is_found_when_this_hosts_clock_runs_90_s_ahead(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """This host's clock is 90 s ahead of the exchange's (Orderly accepts signed requests within
    300 s, so the daemon runs normally). The exchange liquidates the position and stamps the
    liquidation with its own clock. The first version failed: the guard looks for liquidations
    since the LOCAL time it last saw the position minus 60 s (and sends that as ``start_t``), so
    the liquidation is outside the window and the death is recorded as the owner's
    ``position_closed``. The position's own ``exchange_ms`` (the exchange's ``updated_time``) is
    on the exchange's clock and would bound it correctly."""
    skew = 90_000
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    now = clock.now_ms()
    seen = replace(FAR, exchange_ms=now - skew, received_ms=now, source=Source.REST)
    await harness.guard.on_snapshot(AccountSnapshot(
        ACCOUNT, free_collateral=D(10**7), total_collateral_value=D(10**7),
        positions=(seen,), exchange_ms=now - skew, received_ms=now))
    clock.advance(1)
    now = clock.now_ms()
    fake.liquidations.append(
        Liquidation(ACCOUNT, 1, now - skew, ALT, D(10), D(84), D(0), D(0)))
    pushed = replace(gone(FAR, now), exchange_ms=now - skew)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((pushed,)))
    records = await observations(audit, "position_liquidated", harness.guard)
    assert [r["liquidation_id"] for r in records] == ["1"]


@pytest.mark.parametrize("guard_last", [
    '[{"at_ms": "99999999999999999999", "what": "ADD 5 decided"}]',  # past year 9999
    '[{"at_ms": "1700000000000", "what": 5}]',  # not a string
], ids=["huge-time", "what-not-text"])
async def test_audit_why_survives_odd_guard_last_notes(
    timed_audit: AuditLog, guard_clock: ManualClock, tmp_path: Path, guard_last: str,
) -> None:
    """A ``position_liquidated`` whose ``guard_last`` is valid JSON with odd values (a record
    written by another version or edited by hand). The first version failed: ``_from_ms``
    catches only ValueError (a time past year 9999 raises OSError/OverflowError) and ``explain``
    assumes every note's ``what`` is a string (TypeError): a traceback instead of one clear line
    (docs: no command may show a traceback)."""
    audit = timed_audit
    await audit.record_observation(ACCOUNT, ALT, "position_liquidated", {
        "margin_mode": "ISOLATED", "guard_last": guard_last, "liquidation_id": "1",
        "transfer_price": "98.9"})
    await audit.flush()
    url = f"sqlite:///{tmp_path / 'timed.db'}"
    result = CliRunner().invoke(cli.main, ["audit", "why", "--db", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))


# -- 7. several instances (guardbot/ownership.py): the standby watches every account too -------


async def test_a_standby_instance_does_not_record_the_owners_top_up_as_someone_elses(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """Two ``guardbot run`` processes share the accounts and the PostgreSQL audit database; this one
    does not own the account (ownership gave it to the peer) but still polls and streams it, as the
    daemon does for every configured account. The peer tops the position up by 50. The first version
    failed: ``_observe`` runs for accounts the guard does not own, and this instance made no call,
    so it records the peer guard's own top-up in the shared audit log as
    ``margin_changed_by_others`` -- every top-up of a two-instance deployment."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    harness.guard.owned = frozenset()  # the peer guards it
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.snapshot(ACCOUNT, replace(FAR, margin=D(250), seq=2))
    assert await observations(audit, "margin_changed_by_others", harness.guard) == []


async def test_a_standby_instance_does_not_record_a_second_death(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """Same deployment: the peer owns the account and records the liquidation. The first version
    failed: this instance records its own ``position_liquidated`` too (after its own liquidation
    read), with no trail, so ``guardbot audit why`` lists the one death twice, the second time as
    "the guard never acted"."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    harness.guard.owned = frozenset()
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    fake.set_position(FAR)
    fake.liquidate(ALT, D(84))
    clock.advance(1)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    assert await observations(audit, "position_liquidated", harness.guard) == []


async def test_a_liquidation_record_says_what_the_guard_added_to_the_dead_position(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The guard topped the position up by 20 (applied), then the exchange liquidated it.
    The first version failed: ``Guard.closed`` tells the ledger of the close at once
    (``ledger.position_closed(now)``) and only then, in the background, does
    ``_record_liquidation`` ask ``ledger.net_added(key, closed_ms)``: every action of the dead
    position is now before the close marker, so ``guard_net_added`` is always "0" (or, after
    a reopen, the NEW position's figure). The record of a death misstates the money the
    guard put into the position the trader lost."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    action_id = await audit.record_action(ActionRecord(
        account_id=ACCOUNT, symbol=ALT, margin_mode=FAR.margin_mode, policy="topup",
        kind=ActionKind.ADD, amount=D(20), reason="distance below trigger", dry_run=False,
        mark_price=D(100), margin=FAR.margin, qty=FAR.qty, data_age_ms=0,
        source=Source.REST))
    await audit.record_event(action_id, ACCOUNT, EventKind.SENT)
    await audit.record_event(action_id, ACCOUNT, EventKind.SUCCEEDED, latency_ms=50)
    assert await harness.guard.ledger.net_added(FAR.key, clock.now_ms()) == D(20)
    fake.set_position(FAR)
    fake.liquidate(ALT, D(84))
    clock.advance(1)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    [record] = await observations(audit, "position_liquidated", harness.guard)
    assert record["guard_net_added"] == "20", record


async def test_a_reopened_positions_liquidation_is_not_given_to_the_earlier_close(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The owner closes the ALT position (recorded ``position_closed``, kept in ``_unexplained`` in
    case a late liquidation push explains it), reopens the same size five seconds later, and
    that NEW position is liquidated five seconds after that; the exchange pushes the liquidation
    before the position update (an order docs/exchange.md leaves open). The first version
    failed: ``_liquidations_pushed`` matches it to the earlier close (same symbol and size,
    inside its 60 s window; a reopen never clears ``_unexplained``), records the owner's close
    as a liquidation, and the new position's death -- its liquidation now "attributed" -- is
    recorded as a plain close: the operator is told "isolated position closed" for a liquidation
    the guard failed to prevent, and ``audit why`` blames the wrong position."""
    audit, clock = timed_audit, guard_clock
    harness = Harness(audit, clock, [TopUp()])
    fake = fake_of(harness)
    await harness.snapshot(ACCOUNT, FAR)
    clock.advance(1)
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(FAR, clock.now_ms()),)))
    assert len(await observations(audit, "position_closed", harness.guard)) == 1
    clock.advance(5)
    reopened = replace(FAR, seq=(FAR.seq or 0) + 2)
    await harness.snapshot(ACCOUNT, reopened)
    clock.advance(5)
    fake.set_position(replace(reopened, exchange_ms=clock.now_ms()))
    liquidation = fake.liquidate(ALT, D(84))
    await harness.guard.on_event(ACCOUNT, LiquidationsPushed((liquidation,)))
    await harness.guard.on_event(ACCOUNT, PositionsPushed((gone(reopened, clock.now_ms()),)))
    liquidated = await observations(audit, "position_liquidated", harness.guard)
    closed = await observations(audit, "position_closed", harness.guard)
    assert [r.get("recorded_after_close") for r in liquidated] == [None], (
        "the new position's liquidation was given to the owner's earlier close")
    assert len(closed) == 1, "the liquidated position is recorded as a plain close"
