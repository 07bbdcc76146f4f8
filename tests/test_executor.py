"""The executor against a scripted exchange (a fake, not a patch) and a real SQLite audit log.

The simulated exchange covers the same paths end to end (tests/e2e); here each outcome of
``POST /v1/position_margin`` is forced exactly, including "applied, but the answer was lost".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from guardbot.audit import schema
from guardbot.audit.store import AuditLog
from guardbot.audit.tables import ActionEvent
from guardbot.domain import ActionKind, Intent, MarginMode, Position, PositionKey, Source
from guardbot.exchange.errors import RateLimited, Rejected, Uncertain
from guardbot.executor import Executor, Job, applied

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


class SimTime:
    """Simulated time: ``sleep`` moves the clock instead of waiting."""

    def __init__(self, start_ms: int = 1000) -> None:
        self.ms = start_ms
        self.frozen: asyncio.Event | None = None  # when set: time stands still until it fires

    def now(self) -> int:
        return self.ms

    async def sleep(self, seconds: float) -> None:
        if self.frozen is not None:
            await self.frozen.wait()
        self.ms += int(seconds * 1000)
        await asyncio.sleep(0)


class ScriptedExchange:
    """Keeps isolated margins; each adjust_margin call follows the next scripted outcome:
    "ok", "lost" (applied, answer lost), "timeout" (not applied, Uncertain), "late" (Uncertain,
    and the exchange applies it ``late_ms`` later), "reject", "ratelimit", "boom" (a bug)."""

    def __init__(self, script: list[str] | None = None, time: SimTime | None = None,
                 late_ms: int = 2_000) -> None:
        self.account_id = ACCOUNT
        self.script = list(script or [])
        self.margins: dict[str, Decimal] = {}
        self.calls: list[tuple[float, str, ActionKind, Decimal]] = []
        self.reads: list[int] = []  # when (simulated ms) each read was served
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()  # a call is on the wire (waiting at the gate)
        self.time = time
        self.late_ms = late_ms
        self.late: list[tuple[int, str, Decimal]] = []
        self.closed: set[str] = set()  # symbols whose position is gone (read as None)

    def _now(self) -> int:
        return 10**13 if self.time is None else self.time.now()

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.calls.append((time.monotonic(), symbol, kind, amount))
        outcome = self.script.pop(0) if self.script else "ok"
        delta = amount if kind is ActionKind.ADD else -amount
        if outcome in ("ok", "lost"):
            self.margins[symbol] = self.margins.get(symbol, Decimal(100)) + delta
        if outcome == "late":
            self.late.append((self._now() + self.late_ms, symbol, delta))
        if outcome in ("lost", "timeout", "late"):
            raise Uncertain("read timeout after the request was sent")
        if outcome == "reject":
            raise Rejected(-1101, "Insufficient margin after the operation.", 400)
        if outcome == "ratelimit":
            raise RateLimited("too many requests", retry_after_s=0.01)
        if outcome == "boom":
            raise RuntimeError("a bug below the executor")

    async def get_position(self, symbol: str, margin_mode: MarginMode) -> Position | None:
        now = self._now()
        self.reads.append(now)
        if symbol in self.closed:
            return None
        for due in [entry for entry in self.late if entry[0] <= now]:
            self.late.remove(due)
            self.margins[due[1]] = self.margins.get(due[1], Decimal(100)) + due[2]
        margin = self.margins.get(symbol, Decimal(100))
        return position(symbol, str(margin), received_ms=now)


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    log = await AuditLog.open(url, tmp_path / "spool")
    await log.start_run("test", "hash", "host")
    yield log
    await log.aclose()


async def events(audit: AuditLog) -> list[tuple[str, dict[str, str] | None, int | None]]:
    await audit.flush(5)
    with audit.engine.connect() as connection:
        rows = connection.execute(
            select(ActionEvent.kind, ActionEvent.detail, ActionEvent.code).order_by(
                ActionEvent.seq)
        )
        return [(row.kind, row.detail, row.code) for row in rows]


async def running(executor: Executor, until: Callable[[], bool], timeout_s: float = 5) -> None:
    task = asyncio.create_task(executor.run())
    try:
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


KEY: PositionKey = (ACCOUNT, "PERP_ETH_USDC", MarginMode.ISOLATED)


async def test_success_is_audited_then_verified_on_the_next_snapshot(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=lambda: 1000)  # type: ignore[dict-item]
    assert await executor.submit(job())
    assert await executor.submit(job()) is None, "one action per position at a time"
    await running(executor, lambda: len(exchange.calls) == 1 and KEY in executor._pending)
    assert executor.busy() == {KEY}
    # a snapshot from before the call finished proves nothing
    await executor.observe(position(margin="100", received_ms=900))
    assert executor.busy() == {KEY}
    await executor.observe(position(margin="150", received_ms=1001))
    assert executor.busy() == frozenset()
    kinds = [kind for kind, _, _ in await events(audit)]
    assert kinds == ["INTENT", "SENT", "SUCCEEDED", "VERIFIED"]
    detail = (await events(audit))[-1][1]
    assert detail is not None and detail["margin_seen"] == "150"


async def test_a_lost_answer_is_reconciled_as_applied_and_never_retried(audit: AuditLog) -> None:
    exchange = ScriptedExchange(["lost"])
    reread: list[Position | None] = []

    async def on_reread(found: Position | None, key: PositionKey) -> None:
        reread.append(found)

    clock = SimTime()
    executor = Executor({ACCOUNT: exchange}, audit, on_reread=on_reread,  # type: ignore[dict-item]
                        clock_ms=clock.now, sleep=clock.sleep)
    await executor.submit(job())
    await running(executor, lambda: bool(reread))
    assert len(exchange.calls) == 1
    assert exchange.margins["PERP_ETH_USDC"] == Decimal(150)
    recorded = await events(audit)
    assert [kind for kind, _, _ in recorded] == ["INTENT", "SENT", "UNCERTAIN", "RECONCILED"]
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"
    assert executor.busy() == frozenset()


async def reconciled(exchange: ScriptedExchange, audit: AuditLog, submitted: Job) -> None:
    """Submit one job on simulated time and run until its outcome has been re-read."""
    clock = SimTime()
    executor = Executor({ACCOUNT: exchange}, audit,  # type: ignore[dict-item]
                        clock_ms=clock.now, sleep=clock.sleep)
    await executor.submit(submitted)
    await running(executor, lambda: len(exchange.reads) == 1 and not executor.busy())


async def test_an_uncertain_call_that_did_not_apply_is_reconciled_as_not_applied(
    audit: AuditLog,
) -> None:
    exchange = ScriptedExchange(["timeout"])
    await reconciled(exchange, audit, job())
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "false"
    assert len(exchange.calls) == 1


async def test_an_uncertain_call_on_a_position_gone_by_the_reread_stays_unknown(
    audit: AuditLog,
) -> None:
    """Liquidated or closed before the re-read: its margin cannot say whether the top-up
    landed, so the record says unknown (never "not applied") and the budget keeps it."""
    exchange = ScriptedExchange(["lost"])
    exchange.closed.add("PERP_ETH_USDC")
    await reconciled(exchange, audit, job(amount="50"))
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "unknown"
    assert await audit.added_since(ACCOUNT, 0) == Decimal(50)
    assert len(exchange.calls) == 1


async def test_an_unexpected_error_from_the_call_is_reconciled_not_left_blocking(
    audit: AuditLog,
) -> None:
    exchange = ScriptedExchange(["boom"])
    await reconciled(exchange, audit, job())
    kinds = [kind for kind, _, _ in await events(audit)]
    assert kinds[-2:] == ["UNCERTAIN", "RECONCILED"]
    assert len(exchange.calls) == 1


async def test_rejected_is_recorded_with_the_exchange_code(audit: AuditLog) -> None:
    exchange = ScriptedExchange(["reject"])
    executor = Executor({ACCOUNT: exchange}, audit)  # type: ignore[dict-item]
    await executor.submit(job())
    await running(executor, lambda: KEY not in executor._busy)
    recorded = await events(audit)
    assert [(kind, code) for kind, _, code in recorded][-1] == ("REJECTED", -1101)
    assert exchange.reads == []


async def test_rate_limited_backs_off_rereads_and_hands_back(audit: AuditLog) -> None:
    exchange = ScriptedExchange(["ratelimit"])
    reread: list[Position | None] = []

    async def on_reread(found: Position | None, key: PositionKey) -> None:
        reread.append(found)

    executor = Executor({ACCOUNT: exchange}, audit, on_reread=on_reread)  # type: ignore[dict-item]
    await executor.submit(job())
    await running(executor, lambda: bool(reread))
    assert len(exchange.calls) == 1, "the guard re-decides; the executor never retries"
    assert [kind for kind, _, _ in await events(audit)] == ["INTENT", "SENT", "FAILED"]
    assert executor.busy() == frozenset()


async def test_dry_run_audits_and_sends_nothing(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit)  # type: ignore[dict-item]
    await executor.submit(job(dry_run=True))
    await running(executor, lambda: not executor.busy())
    assert exchange.calls == []
    assert [kind for kind, _, _ in await events(audit)] == ["INTENT", "DRY_RUN"]


async def test_the_most_endangered_position_is_served_first(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    exchange.gate = asyncio.Event()
    executor = Executor({ACCOUNT: exchange}, audit, concurrency=1)  # type: ignore[dict-item]
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
    assert [symbol for _, symbol, _, _ in exchange.calls] == [
        "PERP_A_USDC", "PERP_C_USDC", "PERP_D_USDC", "PERP_B_USDC"]


async def test_calls_stay_under_the_per_account_rate(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit, calls_per_second=8)  # type: ignore[dict-item]
    for index in range(12):
        await executor.submit(job(f"PERP_{index}_USDC"))
    await running(executor, lambda: len(exchange.calls) == 12)
    times = [at for at, _, _, _ in exchange.calls]
    for index, start in enumerate(times):
        assert sum(1 for at in times[index:] if at - start < 1.0) <= 8
    assert times[-1] - times[0] >= 1.0


@pytest.mark.parametrize(
    ("kind", "margin_now", "expected"),
    [
        (ActionKind.ADD, "150", True),
        (ActionKind.ADD, "125", True),
        (ActionKind.ADD, "124.99", False),
        (ActionKind.ADD, "100", False),
        (ActionKind.REDUCE, "50", True),
        (ActionKind.REDUCE, "100", False),
        (ActionKind.REDUCE, "150", False),
    ],
)
def test_applied_compares_with_the_margin_the_decision_saw(
    kind: ActionKind, margin_now: str, expected: bool
) -> None:
    assert applied(replace(job(kind=kind)), Decimal(margin_now)) is expected


async def test_drain_lets_calls_on_the_wire_finish_and_sends_nothing_more(
    audit: AuditLog,
) -> None:
    exchange = ScriptedExchange()
    exchange.gate = asyncio.Event()
    executor = Executor({ACCOUNT: exchange}, audit, concurrency=1)  # type: ignore[dict-item]
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
    assert [symbol for _, symbol, _, _ in exchange.calls] == ["PERP_A_USDC"]
    assert await executor.submit(job("PERP_C_USDC")) is None
    kinds = [kind for kind, _, _ in await events(audit)]
    assert kinds.count("SUCCEEDED") == 1 and kinds.count("FAILED") == 1
    assert executor.busy() == {(ACCOUNT, "PERP_A_USDC", MarginMode.ISOLATED)}  # to verify


async def test_a_push_that_overtakes_the_answer_verifies_the_action(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    exchange.gate = asyncio.Event()
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=lambda: 1000)  # type: ignore[dict-item]
    await executor.submit(job())

    async def push_then_answer() -> None:
        await exchange.entered.wait()  # the call is waiting at the gate, i.e. on the wire
        await executor.observe(position(margin="150", received_ms=1000))
        assert exchange.gate is not None
        exchange.gate.set()

    pusher = asyncio.create_task(push_then_answer())
    await running(executor, lambda: not executor.busy() and pusher.done())
    kinds = [kind for kind, _, _ in await events(audit)]
    assert kinds == ["INTENT", "SENT", "SUCCEEDED", "VERIFIED"]


async def test_only_a_read_requested_after_an_uncertain_outcome_reconciles_it(
    audit: AuditLog,
) -> None:
    exchange = ScriptedExchange(["lost"])
    clock = SimTime()
    attempts: list[int] = []
    gave_up = asyncio.Event()

    async def unreadable(symbol: str, margin_mode: MarginMode) -> Position:
        attempts.append(clock.now())
        if len(attempts) == 2:
            gave_up.set()
        raise RateLimited("still limited")

    exchange.get_position = unreadable  # type: ignore[method-assign]
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now, sleep=clock.sleep,  # type: ignore[dict-item]
                        read_timeout_ms=10_000, reread_delays_s=(0.0, 0.01))
    await executor.submit(job())
    task = asyncio.create_task(executor.run())
    await asyncio.wait_for(gave_up.wait(), 5)
    assert min(attempts) > 1000 + 10_000, "no re-read before the read timeout has passed"
    # A poll that may have been requested before the call failed shows the old margin...
    await executor.observe(position(margin="100", received_ms=1000 + 9_000))
    assert executor.busy(), "a read possibly older than the outcome settles nothing"
    # ...one received a full read timeout later was requested after it: it settles it.
    await executor.observe(position(margin="150", received_ms=1000 + 10_001))
    assert executor.busy() == frozenset()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"


async def test_a_call_applied_after_its_timeout_is_reconciled_as_applied(
    audit: AuditLog,
) -> None:
    # The answer times out, the exchange applies the call 2 s later: an immediate re-read
    # would see the old margin, call it "not applied" and free the position for a second ADD.
    clock = SimTime()
    clock.frozen = asyncio.Event()
    exchange = ScriptedExchange(["late"], time=clock, late_ms=2_000)
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now, sleep=clock.sleep,  # type: ignore[dict-item]
                        read_timeout_ms=11_000)
    await executor.submit(job())
    frozen = clock.frozen

    def settled() -> bool:
        if exchange.calls and not frozen.is_set():
            assert executor.busy() == {KEY}, "busy until the outcome is known"
            frozen.set()
        return frozen.is_set() and not executor.busy()

    await running(executor, settled)
    assert exchange.reads and min(exchange.reads) > 1000 + 11_000
    recorded = await events(audit)
    assert recorded[-1][0] == "RECONCILED"
    assert recorded[-1][1] is not None and recorded[-1][1]["applied"] == "true"
    assert len(exchange.calls) == 1


async def test_an_action_handed_over_from_a_previous_run_is_reconciled_after_the_timeout(
    audit: AuditLog,
) -> None:
    clock = SimTime()
    exchange = ScriptedExchange(time=clock)
    exchange.late.append((clock.now() + 3_000, "PERP_ETH_USDC", Decimal(50)))  # still in flight
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now, sleep=clock.sleep,  # type: ignore[dict-item]
                        read_timeout_ms=11_000)
    older = await audit.record_action(executor._action_record(job(amount="40")))
    action_id = await audit.record_action(executor._action_record(job()))
    executor.reconcile(job(amount="40"), older, clock.now())
    executor.reconcile(job(), action_id, clock.now())
    assert executor.busy() == {KEY}
    assert await executor.submit(job()) is None, "no new action while the old one is open"
    await running(executor, lambda: not executor.busy())
    assert min(exchange.reads) > 1000 + 11_000
    reconciled = [detail for kind, detail, _ in await events(audit) if kind == "RECONCILED"]
    assert [d and d["applied"] for d in reconciled] == ["true", "true"]
    assert exchange.calls == []


async def test_waits_happen_outside_the_worker_slots(audit: AuditLog) -> None:
    # A reconcile waiting out the read timeout must not stall the account's other calls.
    held = asyncio.Event()

    async def hold(seconds: float) -> None:
        await held.wait()

    exchange = ScriptedExchange(["timeout", "ok"])
    executor = Executor({ACCOUNT: exchange}, audit, concurrency=1, sleep=hold)  # type: ignore[dict-item]
    await executor.submit(job("PERP_A_USDC"))
    await executor.submit(job("PERP_B_USDC", urgency="0.03"))
    await running(executor, lambda: len(exchange.calls) == 2)
    assert exchange.reads == [], "the first action's reconcile is still waiting"
    assert (ACCOUNT, "PERP_A_USDC", MarginMode.ISOLATED) in executor.busy()
    held.set()


async def test_a_job_whose_data_aged_in_the_queue_is_not_sent(audit: AuditLog) -> None:
    clock = SimTime()
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now,  # type: ignore[dict-item]
                        max_data_age_ms=1_000)
    await executor.submit(job())  # decided on 5 ms old data
    clock.ms += 1_000  # ... and left waiting in the queue
    await running(executor, lambda: not executor.busy())
    assert exchange.calls == []
    kind, _, _ = (await events(audit))[-1]
    assert kind == "FAILED"
    with audit.engine.connect() as connection:
        message = connection.execute(
            select(ActionEvent.message).where(ActionEvent.kind == "FAILED")).scalar_one()
    assert message is not None and "1005 ms old" in message


async def test_a_rejected_position_is_held_back_longer_on_each_repeat(audit: AuditLog) -> None:
    clock = SimTime()
    exchange = ScriptedExchange(["reject", "reject", "ok"])
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now,  # type: ignore[dict-item]
                        reject_backoff_ms=30_000, reject_backoff_max_ms=45_000)
    for hold_ms in (30_000, 45_000):  # doubled, then capped
        assert await executor.submit(job())
        await running(executor, lambda: KEY not in executor._busy)
        assert executor.busy() == {KEY}
        assert await executor.submit(job()) is None, "not re-sent on the next mark"
        clock.ms += hold_ms - 1
        assert executor.busy() == {KEY}
        clock.ms += 1
        assert executor.busy() == frozenset()
    assert await executor.submit(job())
    await running(executor, lambda: len(exchange.calls) == 3)
    assert executor._rejections == {}, "a success starts the back-off over"
    messages = [kind for kind, _, _ in await events(audit)]
    assert messages.count("REJECTED") == 2


async def test_verification_needs_the_margin_halfway_not_exactly(audit: AuditLog) -> None:
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=lambda: 1000)  # type: ignore[dict-item]
    await executor.submit(job())
    await running(executor, lambda: KEY in executor._pending)
    # a fill also took 10 USDC of margin: the ADD of 50 is still plainly there
    await executor.observe(position(margin="140", received_ms=1001))
    assert executor.busy() == frozenset()
    assert [kind for kind, _, _ in await events(audit)][-1] == "VERIFIED"


async def test_release_records_queued_actions_and_waits_for_calls_on_the_wire(
    audit: AuditLog,
) -> None:
    exchange = ScriptedExchange()
    exchange.gate = asyncio.Event()
    executor = Executor({ACCOUNT: exchange}, audit, concurrency=1)  # type: ignore[dict-item]
    await executor.submit(job("PERP_A_USDC"))
    task = asyncio.create_task(executor.run())
    await exchange.entered.wait()  # A is on the wire
    await executor.submit(job("PERP_B_USDC"))  # B is queued
    released = asyncio.create_task(executor.release(ACCOUNT))
    await audit.flush(5)
    assert not released.done(), "release waits for the call on the wire"
    exchange.gate.set()
    await released
    kinds = [kind for kind, _, _ in await events(audit)]
    assert kinds.count("SUCCEEDED") == 1 and kinds.count("FAILED") == 1
    assert [symbol for _, symbol, _, _ in exchange.calls] == ["PERP_A_USDC"]
    assert executor.busy() == frozenset()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_time_spent_deciding_counts_towards_the_data_age(audit: AuditLog) -> None:
    """Measured at the start of a slow evaluation (audit reads while the database is
    gone), then queued: the data's age at dequeue includes the evaluation time."""
    clock = SimTime()
    exchange = ScriptedExchange()
    executor = Executor({ACCOUNT: exchange}, audit, clock_ms=clock.now,  # type: ignore[dict-item]
                        max_data_age_ms=1_000)
    measured = clock.now()
    clock.ms += 900  # the rest of the evaluation
    await executor.submit(replace(job(), measured_ms=measured))
    clock.ms += 200  # queued: 5 + 900 + 200 ms in all
    await running(executor, lambda: not executor.busy())
    assert exchange.calls == []
    assert (await events(audit))[-1][0] == "FAILED"
