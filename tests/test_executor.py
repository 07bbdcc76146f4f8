"""The executor against the shipped in-memory exchange (``guardbot.exchange.fake``, a fake,
not a patch) and a real SQLite audit log.

The simulated exchange covers the same paths end to end (tests/e2e); here each outcome of
``POST /v1/position_margin`` is forced exactly, including "applied, but the answer was lost".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

import pytest
from sqlalchemy import select

from guardbot.audit.store import AuditLog, EventKind
from guardbot.audit.tables import ActionEvent
from guardbot.clock import ManualClock
from guardbot.domain import ActionKind, Intent, MarginMode, Position, PositionKey, Source
from guardbot.exchange.errors import RateLimited
from guardbot.exchange.fake import (
    LOST,
    OK,
    TIMEOUT,
    FakeExchange,
    Outcome,
    auth_error,
    late,
    raises,
    rate_limited,
    rejected,
)
from guardbot.executor import AUTH_BACKOFF_MS, Executor, Job
from guardbot.settlement import Settlement

ACCOUNT = "0x" + "ab" * 32


def position(symbol: str = "PERP_ETH_USDC", margin: str = "100", received_ms: int = 0) -> Position:
    return Position(
        account_id=ACCOUNT, symbol=symbol, margin_mode=MarginMode.ISOLATED, qty=Decimal(1),
        average_open_price=Decimal(2000), cost_position=Decimal(2000),
        mark_price=Decimal(1900), margin=Decimal(margin), leverage=10,
        unsettled_pnl=Decimal(-100), est_liq_price=None, mmr=Decimal("0.05"),
        imr=Decimal("0.1"), last_sum_unitary_funding=Decimal(0), seq=1, exchange_ms=0,
        received_ms=received_ms, source=Source.REST,
    )


def job(symbol: str = "PERP_ETH_USDC", kind: ActionKind = ActionKind.ADD, amount: str = "50",
        urgency: str = "0.02", dry_run: bool = False) -> Job:
    intent = Intent(ACCOUNT, symbol, kind, Decimal(amount), "topup", "test",
                    urgency=Decimal(urgency))
    return Job(intent, position(symbol), data_age_ms=5, distance=Decimal(urgency),
               dry_run=dry_run)


def exchange_on(clock: ManualClock, *outcomes: Outcome,
                symbols: tuple[str, ...] = ("PERP_ETH_USDC",)) -> FakeExchange:
    """The shipped in-memory exchange holding a 100 USDC isolated position per symbol."""
    return FakeExchange(ACCOUNT, clock=clock, outcomes=outcomes,
                        positions=[position(symbol) for symbol in symbols])


def read_times(exchange: FakeExchange) -> list[int]:
    return [read.at_ms for read in exchange.reads]


def called(exchange: FakeExchange) -> list[str]:
    return [call.symbol for call in exchange.calls]


async def events(audit: AuditLog) -> list[tuple[str, dict[str, str] | None, int | None]]:
    await audit.flush(5)
    with audit.engine.connect() as connection:
        rows = connection.execute(
            select(ActionEvent.kind, ActionEvent.detail, ActionEvent.code).order_by(
                ActionEvent.seq)
        )
        return [(row.kind, row.detail, row.code) for row in rows]


@contextlib.asynccontextmanager
async def working(executor: Executor) -> AsyncIterator[None]:
    """The executor's workers run inside the block (as in the daemon, for its lifetime)."""
    task = asyncio.create_task(executor.run())
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def running(executor: Executor, condition: Callable[[], bool]) -> None:
    async with working(executor):
        await until(condition)



KEY: PositionKey = (ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED)


def executor_on(exchange: FakeExchange, audit: AuditLog, clock: ManualClock,
                **options: Any) -> Executor:
    return Executor({ACCOUNT: exchange}, audit, clock=clock, **options)


def kinds(recorded: list[tuple[str, dict[str, str] | None, int | None]]) -> list[str]:
    return [kind for kind, _, _ in recorded]


async def test_success_is_audited_then_verified_on_the_next_snapshot(audit: AuditLog) -> None:
    clock = ManualClock(start_ms=1000)
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock)
    assert await executor.submit(job())
    assert await executor.submit(job()) is None, "one action per position at a time"
    await running(executor, lambda: len(exchange.calls) == 1 and KEY not in executor.blocked())
    assert executor.settlement.unsettled(KEY) == 1
    assert executor.settlement.known_effect(KEY) == Decimal(50)
    # a snapshot from before the call proves nothing
    await executor.observe(position(margin="100", received_ms=900))
    assert executor.settlement.unsettled(KEY) == 1
    await executor.observe(position(margin="150", received_ms=1001))
    assert executor.settlement.unsettled(KEY) == 0
    recorded = await events(audit)
    assert kinds(recorded) == ["INTENT", "SENT", "SUCCEEDED", "VERIFIED"]
    detail = recorded[-1][1]
    assert detail is not None and detail["margin_seen"] == "150"


async def test_a_lost_answer_is_settled_applied_by_the_read_made_at_once(
    audit: AuditLog,
) -> None:
    """The exchange applied the call and the answer was lost: the position is read at once,
    and the read that shows the margin moved settles it; no settle window is waited out
    and the call is never repeated."""
    clock = ManualClock()
    exchange = exchange_on(clock, LOST)
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    await running(executor, lambda: not executor.settlement.unsettled(KEY) and exchange.calls)
    assert len(exchange.calls) == 1
    assert read_times(exchange) == [clock.now_ms()], "read at once, the clock never moved"
    recorded = await events(audit)
    assert kinds(recorded) == ["INTENT", "SENT", "UNCERTAIN", "RECONCILED"]
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"


async def test_an_uncertain_call_that_did_not_land_is_not_applied_only_after_the_window(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, TIMEOUT)
    executor = executor_on(exchange, audit, clock,
                           settlement=Settlement(settle_window_ms=11_000))
    await executor.submit(job())
    async with working(executor):
        await until(lambda: len(exchange.reads) == 1)
        assert executor.settlement.unsettled(KEY) == 1, "the first read can't say it won't land"
        assert KEY not in executor.blocked(), "a rescue may go out meanwhile"
        start = clock.now_ms()
        clock.advance(11.001)
        await until(lambda: not executor.settlement.unsettled(KEY) and not executor._waits)
    assert read_times(exchange)[-1] > start + 11_000
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "false"
    assert len(exchange.calls) == 1


async def test_an_uncertain_call_on_a_position_gone_by_the_read_stays_unknown(
    audit: AuditLog,
) -> None:
    """Liquidated or closed before the read: its margin cannot say whether the top-up
    landed, so the record says unknown (never "not applied") and the budget keeps it."""
    clock = ManualClock()
    exchange = exchange_on(clock, LOST)
    exchange.close("PERP_ETH_USDC")
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job(amount="50"))
    await running(executor, lambda: bool(exchange.reads) and not executor.settlement.unsettled(KEY))
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "unknown"
    assert await audit.ledger.added_since(ACCOUNT, 0, clock.now_ms()) == Decimal(50)
    assert len(exchange.calls) == 1


async def test_an_unexpected_error_from_the_call_is_settled_from_evidence(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, raises(lambda: RuntimeError("a bug below the executor")))
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    async with working(executor):
        await until(lambda: len(exchange.reads) == 1)
        clock.advance(12)
        await until(lambda: not executor.settlement.unsettled(KEY) and not executor._waits)
    assert kinds(await events(audit))[-2:] == ["UNCERTAIN", "RECONCILED"]
    assert len(exchange.calls) == 1


async def test_rejected_is_recorded_with_the_exchange_code(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, rejected(-1101, "Insufficient margin after the operation."))
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    await running(executor, lambda: bool(exchange.calls) and executor._running == 0)
    recorded = await events(audit)
    assert [(kind, code) for kind, _, code in recorded][-1] == ("REJECTED", -1101)
    assert exchange.reads == []
    assert executor.settlement.unsettled(KEY) == 0, "a rejected call moved no money"


async def test_a_rejected_sweep_holds_back_sweeps_only_never_the_rescue(
    audit: AuditLog,
) -> None:
    """-1101 is what a REDUCE gets when the price moved against the position, just before
    a rescue is needed: the hold-back is for REDUCEs, and an ADD goes out at once."""
    clock = ManualClock()
    exchange = exchange_on(clock, rejected(-1101, "Insufficient margin after the operation."))
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job(kind=ActionKind.REDUCE))
    await running(executor, lambda: KEY in executor.held())
    assert executor.held() == {KEY: frozenset({ActionKind.REDUCE})}
    assert await executor.submit(job(kind=ActionKind.REDUCE)) is None, "no sweep again"
    assert await executor.submit(job(kind=ActionKind.ADD)) is not None, "the rescue goes"
    await running(executor, lambda: len(exchange.calls) == 2)
    assert [call.kind for call in exchange.calls] == [ActionKind.REDUCE, ActionKind.ADD]


async def test_a_job_queued_while_the_last_answer_is_recorded_keeps_the_position_busy(
    audit: AuditLog,
) -> None:
    """The first call's end must not unmark a newer action queued meanwhile: the position
    would look free and a second top-up be decided on the same margin."""
    clock = ManualClock()
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock)
    newer: list[str | None] = []
    slow_disk = asyncio.Event()
    record_event = audit.record_event

    async def recording(action_id: str, account_id: str, kind: EventKind,
                        **options: Any) -> None:
        if kind is EventKind.SUCCEEDED and not newer:
            # an evaluation while the first answer is being written: the call is no longer
            # on the wire, so a newer action may be queued
            newer.append(await executor.submit(job(amount="30")))
        if kind is EventKind.SENT and newer and action_id == newer[0]:
            await slow_disk.wait()  # the newer action's SENT record is slow to fsync
        await record_event(action_id, account_id, kind, **options)

    audit.record_event = recording  # type: ignore[method-assign]
    await executor.submit(job(amount="50"))
    task = asyncio.create_task(executor.run())
    try:
        await until(lambda: bool(newer) and executor._running == 1)  # the first has ended
        assert newer[0] is not None
        assert KEY in executor.busy(), "the newer action still marks the position"
        assert await executor.submit(job(amount="30")) is None, "no third top-up"
        slow_disk.set()
        await until(lambda: len(exchange.calls) == 2 and executor._running == 0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [call.amount for call in exchange.calls] == [Decimal(50), Decimal(30)]


async def test_rate_limited_backs_off_rereads_and_hands_back(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, rate_limited(retry_after_s=0.01))
    reread: list[Position | None] = []

    async def on_reread(found: Position | None, key: PositionKey) -> None:
        reread.append(found)

    executor = executor_on(exchange, audit, clock, on_reread=on_reread)
    await executor.submit(job())
    async with working(executor):
        await until(lambda: bool(exchange.calls) and executor._running == 0)
        assert KEY in executor.blocked(), "held for the back-off the exchange asked for"
        clock.advance(0.01)
        await until(lambda: bool(reread))
    assert len(exchange.calls) == 1, "the guard re-decides; the executor never retries"
    assert kinds(await events(audit)) == ["INTENT", "SENT", "FAILED"]
    assert executor.blocked() == frozenset()


async def test_dry_run_audits_and_sends_nothing(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job(dry_run=True))
    await running(executor, lambda: not executor.blocked())
    assert exchange.calls == []
    assert kinds(await events(audit)) == ["INTENT", "DRY_RUN"]


async def test_the_most_endangered_position_is_served_first(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, symbols=("PERP_A_USDC", "PERP_B_USDC", "PERP_C_USDC",
                                           "PERP_D_USDC"))
    exchange.gate = asyncio.Event()
    executor = executor_on(exchange, audit, clock, concurrency=1)
    await executor.submit(job("PERP_A_USDC", urgency="0.04"))  # taken first, then held at the gate

    async def submit_the_rest_then_open() -> None:
        await exchange.entered.wait()
        for symbol, urgency in [("PERP_B_USDC", "0.03"), ("PERP_C_USDC", "0.001"),
                                ("PERP_D_USDC", "0.02")]:
            await executor.submit(job(symbol, urgency=urgency))
        assert exchange.gate is not None
        exchange.gate.set()

    opener = asyncio.create_task(submit_the_rest_then_open())
    await running(executor, lambda: len(exchange.calls) == 4)
    await opener
    assert called(exchange) == ["PERP_A_USDC", "PERP_C_USDC", "PERP_D_USDC", "PERP_B_USDC"]


async def test_drain_lets_calls_on_the_wire_finish_and_sends_nothing_more(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, symbols=("PERP_A_USDC", "PERP_B_USDC", "PERP_C_USDC"))
    exchange.gate = asyncio.Event()
    executor = executor_on(exchange, audit, clock, concurrency=1)
    await executor.submit(job("PERP_A_USDC"))
    task = asyncio.create_task(executor.run())
    await exchange.entered.wait()  # A is on the wire (held at the gate)
    await executor.submit(job("PERP_B_USDC"))  # B waits in the queue
    drained = asyncio.create_task(executor.drain(timeout_s=5))
    await asyncio.sleep(0.05)
    assert not drained.done(), "drain waits for the call on the wire"
    exchange.gate.set()
    await drained
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert called(exchange) == ["PERP_A_USDC"]
    assert await executor.submit(job("PERP_C_USDC")) is None
    recorded = kinds(await events(audit))
    assert recorded.count("SUCCEEDED") == 1 and recorded.count("FAILED") == 1
    assert executor.settlement.unsettled_keys() == {(ACCOUNT, "PERP_A_USDC", MarginMode.ISOLATED)}


async def test_a_push_that_overtakes_the_answer_verifies_the_action(audit: AuditLog) -> None:
    clock = ManualClock(start_ms=1000)
    exchange = exchange_on(clock)
    exchange.gate = asyncio.Event()
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())

    async def push_then_answer() -> None:
        await exchange.entered.wait()  # the call is waiting at the gate, i.e. on the wire
        await executor.observe(position(margin="150", received_ms=1000))
        assert exchange.gate is not None
        exchange.gate.set()

    pusher = asyncio.create_task(push_then_answer())
    async with working(executor):
        await until(lambda: pusher.done() and not executor.settlement.unsettled(KEY))
        # Settled the moment the answer came; its records follow: let the call finish.
        await executor.drain(timeout_s=5)
    assert kinds(await events(audit)) == ["INTENT", "SENT", "SUCCEEDED", "VERIFIED"]


async def test_evidence_settles_an_uncertain_call_at_once_its_absence_only_after_the_window(
    audit: AuditLog,
) -> None:
    clock = ManualClock(start_ms=1000)
    exchange = exchange_on(clock, TIMEOUT)
    exchange.read_failure = lambda: RateLimited("still limited")
    executor = executor_on(exchange, audit, clock, reread_delays_s=(0.0,),
                           settlement=Settlement(settle_window_ms=10_000))
    await executor.submit(job())
    await running(executor, lambda: bool(exchange.reads))
    # A poll received within the window shows the old margin: it may still land...
    await executor.observe(position(margin="100", received_ms=1000 + 9_000))
    assert executor.settlement.unsettled(KEY) == 1
    # ...and a push that shows it landed settles it at once, window or not.
    await executor.observe(position(margin="150", received_ms=1000 + 9_500))
    assert executor.settlement.unsettled(KEY) == 0
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"


async def test_a_call_applied_after_its_timeout_is_reconciled_as_applied(
    audit: AuditLog,
) -> None:
    # The answer times out and the exchange applies the call 2 s later: the read made at
    # once sees the old margin, which must not be taken for "not applied".
    clock = ManualClock()
    exchange = exchange_on(clock, late(2_000))
    executor = executor_on(exchange, audit, clock,
                           settlement=Settlement(settle_window_ms=11_000))
    await executor.submit(job())
    async with working(executor):
        await until(lambda: len(exchange.reads) == 1)
        await asyncio.sleep(0.05)
        assert executor.settlement.unsettled(KEY) == 1
        assert "RECONCILED" not in kinds(await events(audit))
        clock.advance(11.001)
        await until(lambda: not executor.settlement.unsettled(KEY) and not executor._waits)
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"
    assert len(exchange.calls) == 1


async def test_actions_handed_over_from_a_previous_run_are_settled_together(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock)
    exchange.apply_at(clock.now_ms() + 3_000, "PERP_ETH_USDC", ActionKind.ADD, Decimal(90))
    # both land
    executor = executor_on(exchange, audit, clock,
                           settlement=Settlement(settle_window_ms=11_000))
    older = await audit.record_action(job(amount="40").record())
    newer = await audit.record_action(job().record())
    executor.adopt(older, job(amount="40").record(), clock.now_ms())
    executor.adopt(newer, job().record(), clock.now_ms())
    assert executor.settlement.unsettled(KEY) == 2
    assert KEY not in executor.blocked(), "the guard may still rescue the position"
    async with working(executor):
        await until(lambda: len(exchange.reads) >= 1)
        assert executor.settlement.unsettled(KEY) == 2, "the first read shows neither"
        clock.advance(11.001)
        await until(lambda: not executor.settlement.unsettled(KEY) and not executor._waits)
    reconciled = [detail for kind, detail, _ in await events(audit) if kind == "RECONCILED"]
    assert [d and d["applied"] for d in reconciled] == ["true", "true"]
    assert exchange.calls == []


async def test_waits_happen_outside_the_worker_slots(audit: AuditLog) -> None:
    # An uncertain call waiting out its settle window must not stall the account's others.
    clock = ManualClock()
    exchange = exchange_on(clock, TIMEOUT, symbols=("PERP_A_USDC", "PERP_B_USDC"))
    executor = executor_on(exchange, audit, clock, concurrency=1)
    await executor.submit(job("PERP_A_USDC"))
    await executor.submit(job("PERP_B_USDC", urgency="0.03"))
    await running(executor, lambda: len(exchange.calls) == 2)
    assert executor.settlement.unsettled((ACCOUNT, "PERP_A_USDC", MarginMode.ISOLATED)) == 1


async def test_a_job_whose_data_aged_in_the_queue_is_not_sent(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock, max_data_age_ms=1_000)
    await executor.submit(job())  # decided on 5 ms old data
    clock.advance(1.0)  # ... and left waiting in the queue
    await running(executor, lambda: not executor.blocked())
    assert exchange.calls == []
    kind, _, _ = (await events(audit))[-1]
    assert kind == "FAILED"
    with audit.engine.connect() as connection:
        message = connection.execute(
            select(ActionEvent.message).where(ActionEvent.kind == "FAILED")).scalar_one()
    assert message is not None and "1005 ms old" in message


async def test_an_action_queued_for_a_position_that_closed_is_not_sent(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    await executor.closed(KEY)
    await running(executor, lambda: not executor.blocked())
    assert exchange.calls == []
    assert kinds(await events(audit))[-1] == "FAILED"


async def test_nothing_is_sent_once_the_ownership_lease_lapsed(audit: AuditLog) -> None:
    """An action decided while this instance owned the account waits in the queue while
    its ownership lease lapses (the process was stopped and a peer may have taken the
    account over): the worker records it as not sent, and nothing reaches the exchange.
    Once the lease is confirmed again, calls go out as before."""
    clock = ManualClock()
    exchange = exchange_on(clock)
    lease_until = [4.0]  # AccountOwnership.may_act: owned, last good tick under 4 s ago
    asked: list[str] = []

    def may_act(account_id: str) -> bool:
        asked.append(account_id)
        return clock.monotonic() < lease_until[0]

    executor = executor_on(exchange, audit, clock, may_act=may_act)
    assert await executor.submit(job())
    clock.advance(4.0)  # woken after the lease: the worker takes the job only now
    await running(executor, lambda: not executor.blocked())
    assert exchange.calls == []
    assert asked == [ACCOUNT], "asked as the job left the queue"
    assert kinds(await events(audit)) == ["INTENT", "FAILED"]
    with audit.engine.connect() as connection:
        message = connection.execute(
            select(ActionEvent.message).where(ActionEvent.kind == "FAILED")).scalar_one()
    assert message == "not sent: this instance's ownership of the account lapsed"

    lease_until[0] = clock.monotonic() + 4.0  # a good tick: the lease holds again
    assert await executor.submit(job())
    await running(executor, lambda: len(exchange.calls) == 1)


class SlowSent:
    """The audit log, except that each SENT record takes until ``written`` is set (a spool
    fsync on a busy disk): the wait between ``may_act`` and the exchange call."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self.waiting = asyncio.Event()
        self.written = asyncio.Event()

    async def record_event(self, action_id: str, account_id: str, kind: EventKind,
                           **fields: Any) -> None:
        if kind is EventKind.SENT:
            self.waiting.set()
            await self.written.wait()
        await self.audit.record_event(action_id, account_id, kind, **fields)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.audit, name)


async def test_nothing_is_sent_when_the_lease_lapsed_while_the_sent_record_was_written(
    audit: AuditLog,
) -> None:
    """may_act held as the job left its queue, but the SENT record took past the lease
    (here: the process was stopped during the write, or the disk was that slow). A peer may
    own the account by now: the call must not go out."""
    clock = ManualClock()
    exchange = exchange_on(clock)
    slow = SlowSent(audit)
    executor = Executor({ACCOUNT: exchange}, cast(AuditLog, slow), clock=clock,
                        may_act=lambda _account_id: clock.monotonic() < 4.0)
    assert await executor.submit(job())
    async with working(executor):
        await until(slow.waiting.is_set)
        clock.advance(5.0)
        slow.written.set()
        await until(lambda: not executor.blocked())
    assert exchange.calls == []
    assert kinds(await events(audit))[-1] == "FAILED"


async def held_back_for(executor: Executor, clock: ManualClock, hold_ms: int) -> None:
    """Submit a job, see it refused, and the position held back exactly ``hold_ms``."""
    assert await executor.submit(job())
    await running(executor, lambda: KEY in executor.held())
    assert await executor.submit(job()) is None, "not re-sent on the next mark"
    clock.advance((hold_ms - 1) / 1000)
    assert KEY in executor.blocked()
    clock.advance(0.001)
    assert executor.blocked() == frozenset()


async def test_a_rejected_position_is_held_back_longer_on_each_repeat(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, rejected(), rejected())
    executor = executor_on(exchange, audit, clock,
                           reject_backoff_ms=30_000, reject_backoff_max_ms=45_000)
    for hold_ms in (30_000, 45_000):  # doubled, then capped
        await held_back_for(executor, clock, hold_ms)
    assert await executor.submit(job())
    await running(executor, lambda: len(exchange.calls) == 3)
    assert executor._rejections == {}, "a success starts the back-off over"
    assert kinds(await events(audit)).count("REJECTED") == 2


async def test_an_auth_failure_holds_back_briefly_so_a_fixed_clock_rescues_at_once(
    audit: AuditLog,
) -> None:
    """Refused signatures (this host's clock off) are not resent on every mark tick, but a
    clock put right must not cost the next rescue the 30 s hold-back of a rejection."""
    clock = ManualClock()
    exchange = exchange_on(clock, auth_error(), auth_error(), OK, auth_error())
    executor = executor_on(exchange, audit, clock, reject_backoff_ms=30_000)
    for hold_ms in (AUTH_BACKOFF_MS, 2 * AUTH_BACKOFF_MS, None, AUTH_BACKOFF_MS):
        if hold_ms is None:  # the clock is right again: a success starts the hold over
            assert await executor.submit(job())
            await running(executor, lambda: len(exchange.calls) == 3)
            continue
        await held_back_for(executor, clock, hold_ms)
    recorded = await events(audit)
    assert [code for kind, _, code in recorded if kind == "FAILED"] == [-1002] * 3


async def sweeps_refused(executor: Executor, clock: ManualClock, count: int) -> None:
    """``count`` sweeps refused in a row, each hold-back waited out."""
    for _ in range(count):
        assert await executor.submit(job(kind=ActionKind.REDUCE))
        await running(executor, lambda: KEY in executor.held())
        clock.advance(16 * 60)  # past any hold
        assert executor.held() == {}


async def test_refused_sweeps_do_not_lengthen_the_hold_of_a_rescue(audit: AuditLog) -> None:
    """-1101 answers both an over-REDUCE and an over-ADD. Five refused sweeps, then one
    rescue refused for the balance: the rescue is held its own first 30 s, not 15 min."""
    clock = ManualClock()
    exchange = exchange_on(clock, *[rejected(-1101, "Insufficient margin after the "
                                             "operation.")] * 5,
                           rejected(-1101, "Insufficient balance."))
    executor = executor_on(exchange, audit, clock, reject_backoff_ms=30_000,
                           reject_backoff_max_ms=15 * 60_000)
    await sweeps_refused(executor, clock, 5)
    assert await executor.submit(job(kind=ActionKind.ADD))
    await running(executor, lambda: KEY in executor.held())
    clock.advance(30.0)
    assert ActionKind.ADD not in executor.held().get(KEY, ())


async def test_refused_sweeps_do_not_lengthen_the_auth_hold_of_a_rescue(
    audit: AuditLog,
) -> None:
    """Sweeps refused for the signature (the clock is off) must not turn the first rescue's
    2 s authentication hold into the 30 s cap."""
    clock = ManualClock()
    exchange = exchange_on(clock, *[auth_error()] * 5)
    executor = executor_on(exchange, audit, clock, reject_backoff_ms=30_000)
    await sweeps_refused(executor, clock, 4)
    assert await executor.submit(job(kind=ActionKind.ADD))
    await running(executor, lambda: KEY in executor.held())
    clock.advance(AUTH_BACKOFF_MS / 1000)
    assert ActionKind.ADD not in executor.held().get(KEY, ())


async def test_a_new_position_inherits_no_hold_back(audit: AuditLog) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, rejected())
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    await running(executor, lambda: KEY in executor.held())
    await executor.closed(KEY)  # closed (or liquidated); a new one opens on the symbol
    assert executor.blocked() == frozenset()
    assert executor._rejections == {}


async def test_a_success_the_margin_cannot_show_is_settled_once_it_must_show(
    audit: AuditLog,
) -> None:
    """Something else took 10 USDC of margin meanwhile: 140, not 150. The guard must not
    keep adding 50 to a margin that already holds it."""
    clock = ManualClock(start_ms=1000)
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock)
    await executor.submit(job())
    await running(executor, lambda: bool(exchange.calls) and not executor.blocked())
    await executor.observe(position(margin="140", received_ms=1001))
    assert executor.settlement.known_effect(KEY) == Decimal(50), "may predate the change"
    await executor.observe(position(margin="140", received_ms=2001))
    assert executor.settlement.unsettled(KEY) == 0
    recorded = await events(audit)
    assert recorded[-1][0] == "VERIFIED"
    assert recorded[-1][1] is not None and recorded[-1][1]["verified"] == "false"


async def test_release_records_queued_actions_and_waits_for_calls_on_the_wire(
    audit: AuditLog,
) -> None:
    clock = ManualClock()
    exchange = exchange_on(clock, symbols=("PERP_A_USDC", "PERP_B_USDC"))
    exchange.gate = asyncio.Event()
    executor = executor_on(exchange, audit, clock, concurrency=1)
    await executor.submit(job("PERP_A_USDC"))
    task = asyncio.create_task(executor.run())
    await exchange.entered.wait()  # A is on the wire
    await executor.submit(job("PERP_B_USDC"))  # B is queued
    released = asyncio.create_task(executor.release(ACCOUNT))
    await audit.flush(5)
    assert not released.done(), "release waits for the call on the wire"
    exchange.gate.set()
    await released
    recorded = kinds(await events(audit))
    assert recorded.count("SUCCEEDED") == 1 and recorded.count("FAILED") == 1
    assert called(exchange) == ["PERP_A_USDC"]
    assert executor.blocked() == frozenset()
    assert executor.settlement.unsettled_keys() == frozenset(), "the next holder's to settle"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_time_spent_deciding_counts_towards_the_data_age(audit: AuditLog) -> None:
    """Measured at the start of a slow evaluation (audit reads while the database is
    gone), then queued: the data's age at dequeue includes the evaluation time."""
    clock = ManualClock()
    exchange = exchange_on(clock)
    executor = executor_on(exchange, audit, clock, max_data_age_ms=1_000)
    measured = clock.now_ms()
    clock.advance(0.9)  # the rest of the evaluation
    await executor.submit(replace(job(), measured_ms=measured))
    clock.advance(0.2)  # queued: 5 + 900 + 200 ms in all
    await running(executor, lambda: not executor.blocked())
    assert exchange.calls == []
    assert (await events(audit))[-1][0] == "FAILED"
