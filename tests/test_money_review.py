"""Adversarial review of the money path since f151871 (guard, ledger, topup's calm promise,
closes and liquidations). Each test FAILS ON PURPOSE on the code it was written against,
until its problem is fixed; the docstring says what goes wrong and what it costs.

Driven like tests/test_guard.py: a ManualClock shared with a real SQLite audit log
(``timed_audit``) or the plain ``audit``, the shipped FakeExchange; the executor's workers
do not run, so an approved action stays queued and is read back from the audit log.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

from factories import ACCOUNT, ALT_RULES
from sqlalchemy import select
from test_guard import FAR, Harness, queued

from guardbot.audit.records import ActionRecord, EventKind
from guardbot.audit.store import AuditLog
from guardbot.audit.tables import Observation
from guardbot.clock import ManualClock
from guardbot.domain import ActionKind, Position, Source
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import LiquidationsPushed, PositionsPushed
from guardbot.guard import Guard
from guardbot.policies.topup import TopUp

ALT = ALT_RULES.symbol
OTHER = "0x" + "ef" * 32


def gone(position: Position, now: int) -> Position:
    """``position``'s update once it is closed (quantity 0)."""
    return replace(position, qty=D(0), margin=D(0), seq=(position.seq or 0) + 1,
                   exchange_ms=now, received_ms=now, source=Source.WS)


async def observations(audit: AuditLog, kind: str, guard: Guard) -> list[dict[str, str]]:
    """The details of the observations of ``kind``, oldest first, once ``guard`` recorded
    every close it saw."""
    await guard.recorded()
    await audit.flush()
    with audit.engine.connect() as connection:
        rows = connection.execute(select(Observation).where(Observation.kind == kind)
                                  .order_by(Observation.time))
        return [dict(row.detail) for row in rows]


def fake_of(harness: Harness) -> FakeExchange:
    fake = harness.guard.exchanges[ACCOUNT]
    assert isinstance(fake, FakeExchange)
    return fake


async def test_a_liquidation_record_says_what_the_guard_added_to_the_dead_position(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The guard topped the position up by 20 (applied), then the exchange liquidated it.
    FAILS: ``Guard.closed`` tells the ledger of the close at once
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


async def test_a_trigger_off_the_look_ahead_step_keeps_topups_calm_promise(
    audit: AuditLog,
) -> None:
    """topup with trigger 0.05005 (a legal value) promises acts_below 0.05005 while the
    mark moves slower than trigger / reach_s = 3.3367 %/s. A fall from 100 to 96.665 in a
    second is 3.335 %/s: below that, so the guard keeps the position 5.0056 % from
    liquidation in its band. FAILS: topup rounds the looked-ahead trigger UP to 0.0001
    (0.050025 -> 0.0501), which is above 0.05005, so it does act there (an ADD of 36.73) --
    the guard that evaluates everything sends the rescue, the band-skipping one sends
    nothing: the promise is broken whenever the trigger is not a multiple of 0.0001
    (the guard's limit should use the rounded reading, or topup should round to the
    trigger, or calm_while should be (floor(trigger to STEP) / reach_s, window))."""
    clock = ManualClock()
    topup = TopUp(trigger="0.05005")
    harness = Harness(audit, clock, [topup])
    reference = Harness(audit, clock, [TopUp(trigger="0.05005")], [OTHER], quiet_bands=False)
    start = replace(FAR, margin=D("127.65"))  # liquidates at 91.826: 8.2 % at 100
    both = ((harness, ACCOUNT), (reference, OTHER))
    clock.advance(10)
    for guard, account in both:
        await guard.snapshot(account, start)
        await guard.tick(account, PERP_ALT_USDC=D(100))
    clock.advance(1)
    for guard, account in both:
        await guard.tick(account, PERP_ALT_USDC=D("96.665"))
    [(_, kind, amount, _)] = await queued(audit, OTHER)
    assert (kind, amount) == ("ADD", D("36.73")), "the full evaluation rescues"
    assert await queued(audit, ACCOUNT) == [("PERP_ALT_USDC", "ADD", D("36.73"), "topup")], (
        "skipped in its band though topup acts at this mark and speed")


async def test_a_reopened_positions_liquidation_is_not_given_to_the_earlier_close(
    timed_audit: AuditLog, guard_clock: ManualClock,
) -> None:
    """The owner closes the ALT position (recorded ``position_closed``, kept in
    ``_unexplained`` in case a late liquidation push explains it), reopens the same size
    five seconds later, and that NEW position is liquidated five seconds after that; the
    exchange pushes the liquidation before the position update (an order docs/exchange.md
    leaves open). FAILS: ``_liquidations_pushed`` matches it to the earlier close (same
    symbol and size, inside its 60 s window; a reopen never clears ``_unexplained``), records
    the owner's close as a liquidation, and the new position's death -- its liquidation now
    "attributed" -- is recorded as a plain close: the operator is told "isolated position
    closed" for a liquidation the guard failed to prevent, and ``audit why`` blames the
    wrong position."""
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
