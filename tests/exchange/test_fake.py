"""The shipped in-memory exchange: what each scripted outcome does to the state and to the
caller, reads stamped from the injected clock, and the streams the test feeds."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from factories import ACCOUNT, ALT_RULES, position

from guardbot.clock import ManualClock
from guardbot.domain import ActionKind, Holding, MarginMode, MarkPrice
from guardbot.exchange.errors import AuthError, RateLimited, Rejected, RetryLater, Uncertain
from guardbot.exchange.fake import (
    LOST,
    OK,
    TIMEOUT,
    FakeExchange,
    MarginCall,
    PositionRead,
    auth_error,
    late,
    raises,
    rate_limited,
    rejected,
)
from guardbot.exchange.port import MarksPushed, StreamGap

ALT = "PERP_ALT_USDC"
ADD, REDUCE = ActionKind.ADD, ActionKind.REDUCE


def fake(clock: ManualClock, **options: object) -> FakeExchange:
    return FakeExchange(ACCOUNT, clock=clock, positions=[position()], **options)  # type: ignore[arg-type]


def margin(exchange: FakeExchange) -> Decimal | None:
    found = exchange.position(ALT)
    return None if found is None else found.margin


async def test_reads_are_stamped_from_the_injected_clock_and_recorded() -> None:
    clock = ManualClock(start_ms=5_000)
    holding = Holding("USDC", Decimal(900), Decimal(0), Decimal(0), Decimal(200), Decimal(0), 1)
    mark = MarkPrice(ALT, Decimal(101), 4_000)
    exchange = fake(clock, holdings=[holding], rules={ALT: ALT_RULES}, marks={ALT: mark},
                    free_collateral=Decimal(700), total_collateral_value=Decimal(900))
    clock.advance(1.5)
    snapshot = await exchange.get_positions()
    assert (snapshot.received_ms, snapshot.exchange_ms) == (6_500, 6_500)
    assert [p.received_ms for p in snapshot.positions] == [6_500]
    assert (snapshot.free_collateral, snapshot.total_collateral_value) == (700, 900)
    clock.advance(0.25)
    one = await exchange.get_position(ALT, MarginMode.ISOLATED, urgent=True)
    assert one is not None and one.received_ms == 6_750 and one.exchange_ms == 1_000
    assert await exchange.get_position(ALT, MarginMode.CROSS) is None
    assert exchange.reads == [PositionRead(None, 6_500, False), PositionRead(ALT, 6_750, True),
                              PositionRead(ALT, 6_750, False)]
    assert await exchange.get_holdings() == (holding,)
    assert await exchange.get_symbol_rules() == {ALT: ALT_RULES}
    assert await exchange.get_mark_prices() == {ALT: mark}


async def test_an_answered_call_moves_margin_and_free_collateral_and_bumps_the_version() -> None:
    clock = ManualClock(start_ms=2_000)
    exchange = fake(clock)
    await exchange.adjust_margin(ALT, ADD, Decimal("50.5"))
    await exchange.adjust_margin(ALT, REDUCE, Decimal(20))
    now = exchange.position(ALT)
    assert now is not None
    assert (now.margin, now.seq, now.exchange_ms) == (Decimal("230.5"), 3, 2_000)
    assert exchange.free_collateral == Decimal(10_000) - Decimal("30.5")
    assert exchange.calls == [MarginCall(ALT, ADD, Decimal("50.5"), 2_000, "ok"),
                              MarginCall(ALT, REDUCE, Decimal(20), 2_000, "ok")]


async def test_outcomes_follow_the_script_in_order_then_every_call_is_answered() -> None:
    clock = ManualClock()
    exchange = fake(clock, outcomes=[LOST])
    exchange.script(TIMEOUT, OK)
    with pytest.raises(Uncertain):
        await exchange.adjust_margin(ALT, ADD, Decimal(10))
    assert margin(exchange) == 210, "lost: applied, the answer never came"
    with pytest.raises(Uncertain):
        await exchange.adjust_margin(ALT, ADD, Decimal(10))
    assert margin(exchange) == 210, "timeout: not applied"
    await exchange.adjust_margin(ALT, ADD, Decimal(10))
    await exchange.adjust_margin(ALT, ADD, Decimal(10))
    assert margin(exchange) == 230
    assert [call.outcome for call in exchange.calls] == ["lost", "timeout", "ok", "ok"]


async def test_a_late_change_lands_after_its_call_timed_out() -> None:
    clock = ManualClock()
    exchange = fake(clock, outcomes=[late(2_000)])
    with pytest.raises(Uncertain):
        await exchange.adjust_margin(ALT, ADD, Decimal(40))
    clock.advance(1.999)
    read = await exchange.get_position(ALT, MarginMode.ISOLATED)
    assert read is not None and read.margin == 200
    clock.advance(0.001)
    read = await exchange.get_position(ALT, MarginMode.ISOLATED)
    assert read is not None and read.margin == 240


@pytest.mark.parametrize(
    ("outcome", "error", "check"),
    [
        (rejected(-1101, "Insufficient balance."), Rejected,
         lambda e: (e.code, e.message, e.http_status) == (-1101, "Insufficient balance.", 400)),
        (rate_limited(0.25), RateLimited, lambda e: e.retry_after_s == 0.25),
        (auth_error(), AuthError, lambda e: e.code == -1002),
        (raises(lambda: RuntimeError("a bug")), RuntimeError, lambda e: str(e) == "a bug"),
    ],
)
async def test_a_refused_call_raises_its_error_and_applies_nothing(
    outcome: object, error: type[BaseException], check: object,
) -> None:
    exchange = fake(ManualClock(), outcomes=[outcome, outcome])  # type: ignore[list-item]
    for _ in range(2):  # a fresh error each time
        with pytest.raises(error) as caught:
            await exchange.adjust_margin(ALT, REDUCE, Decimal(10))
        assert check(caught.value)  # type: ignore[operator]
    assert margin(exchange) == 200 and exchange.free_collateral == 10_000


async def test_no_position_is_refused_but_a_lost_answer_is_still_uncertain() -> None:
    clock = ManualClock()
    exchange = fake(clock, outcomes=[OK, LOST])
    exchange.close(ALT)
    with pytest.raises(Rejected) as caught:
        await exchange.adjust_margin(ALT, ADD, Decimal(10))
    assert caught.value.code == -1006
    with pytest.raises(Uncertain):
        await exchange.adjust_margin(ALT, ADD, Decimal(10))
    assert await exchange.get_position(ALT, MarginMode.ISOLATED) is None
    assert (await exchange.get_positions()).positions == ()
    assert exchange.free_collateral == 10_000


async def test_amounts_are_checked_as_the_real_client_checks_them() -> None:
    exchange = fake(ManualClock())
    for bad in (Decimal(0), Decimal(-1), Decimal("NaN"), 5):
        with pytest.raises(ValueError, match="positive finite Decimal"):
            await exchange.adjust_margin(ALT, ADD, bad)  # type: ignore[arg-type]
    assert exchange.calls == []


async def test_a_read_failure_fails_every_read_until_cleared() -> None:
    clock = ManualClock()
    exchange = fake(clock)
    exchange.read_failure = lambda: RateLimited("still limited")
    for _ in range(2):
        with pytest.raises(RateLimited):
            await exchange.get_position(ALT, MarginMode.ISOLATED)
    with pytest.raises(RateLimited):
        await exchange.get_positions()
    exchange.read_failure = None
    assert await exchange.get_position(ALT, MarginMode.ISOLATED) is not None
    assert len(exchange.reads) == 4, "failed reads are recorded as attempted"


async def test_the_gate_holds_a_call_on_the_wire() -> None:
    exchange = fake(ManualClock())
    exchange.gate = asyncio.Event()
    call = asyncio.create_task(exchange.adjust_margin(ALT, ADD, Decimal(10)))
    await exchange.entered.wait()
    await asyncio.sleep(0)
    assert not call.done() and exchange.calls == [] and margin(exchange) == 200
    exchange.gate.set()
    await call
    assert margin(exchange) == 210


async def test_streams_carry_what_the_test_pushes_and_fail_or_end_when_told() -> None:
    exchange = fake(ManualClock())
    mark = MarksPushed((MarkPrice(ALT, Decimal(99), 1),))
    gap = StreamGap("private", "reconnected")
    exchange.push("private", gap)
    exchange.push("private", mark)
    exchange.fail("private", RetryLater("dropped"))
    exchange.push("private", mark)
    exchange.end("private")
    first = exchange.private_events()
    assert [await anext(first), await anext(first)] == [gap, mark]
    with pytest.raises(RetryLater):
        await anext(first)
    assert [event async for event in exchange.private_events()] == [mark]
    assert exchange.opened == {"private": 2, "public": 0}
    exchange.push("public", mark)
    public = exchange.public_events()
    assert await anext(public) == mark
    waiting = asyncio.create_task(anext(public))
    await asyncio.sleep(0)
    assert not waiting.done(), "an open stream waits for the next push"
    exchange.push("public", gap)
    assert await waiting == gap


async def test_positions_belong_to_the_account() -> None:
    exchange = FakeExchange(ACCOUNT)
    with pytest.raises(ValueError, match="not of"):
        exchange.set_position(position(account_id="0x" + "cd" * 32))
    await exchange.aclose()
    assert exchange.closed
