"""The streams consumer against the shipped in-memory exchange, on a manual clock."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncGenerator, Callable
from decimal import Decimal

import pytest

from guardbot.clock import ManualClock
from guardbot.domain import MarkPrice
from guardbot.exchange.errors import AuthError, RetryLater
from guardbot.exchange.fake import FakeExchange
from guardbot.exchange.port import MarksPushed, StreamEvent, StreamGap
from guardbot.feeds import auth_retry_delay
from guardbot.feeds.streams import EventHandler, Resync, Streams, restart_delay
from guardbot.logs import JsonFormatter, RedactingFilter

MARK = MarksPushed(marks=(MarkPrice("PERP_ETH_USDC", Decimal("2000"), 1),))


async def settle(condition: Callable[[], bool] = lambda: False, turns: int = 50) -> None:
    """Let the event loop run until ``condition`` holds, for at most ``turns`` turns (no
    time passes on the manual clock meanwhile)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)


def recording(order: list[str]) -> tuple[EventHandler, Resync]:
    async def on_event(account_id: str, event: StreamEvent) -> None:
        order.append(type(event).__name__)

    async def resync(account_id: str) -> None:
        assert account_id == "acct"
        order.append("resync")

    return on_event, resync


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_gap_resyncs_before_it_is_passed_on() -> None:
    order: list[str] = []
    clock = ManualClock()
    exchange = FakeExchange("acct", clock=clock)
    for event in (MARK, StreamGap(stream="private", reason="reconnected"), MARK):
        exchange.push("private", event)
    streams = Streams(exchange, *recording(order), public=False, clock=clock)
    task = asyncio.create_task(streams.run())
    await settle(lambda: len(order) == 4)
    await stop(task)
    assert order == ["MarksPushed", "resync", "StreamGap", "MarksPushed"]
    assert exchange.opened == {"private": 1, "public": 0}


async def test_a_failed_stream_is_reopened_after_its_delay_and_a_resync() -> None:
    order: list[str] = []
    clock = ManualClock()
    exchange = FakeExchange("acct", clock=clock)
    exchange.push("private", MARK)
    exchange.fail("private", RetryLater("dropped"))
    exchange.push("private", MARK)
    streams = Streams(exchange, *recording(order), public=False, clock=clock)
    task = asyncio.create_task(streams.run())
    await settle()
    assert order == ["MarksPushed"], "nothing more until the restart delay has passed"
    assert exchange.opened["private"] == 1
    clock.advance(restart_delay(1))
    await settle(lambda: len(order) == 3)
    await stop(task)
    assert exchange.opened["private"] == 2
    assert order == ["MarksPushed", "resync", "MarksPushed"]


async def test_both_streams_run_and_an_ended_one_is_reopened() -> None:
    order: list[str] = []
    clock = ManualClock()
    exchange = FakeExchange("acct", clock=clock)
    exchange.end("private")
    exchange.push("public", MARK)
    streams = Streams(exchange, *recording(order), clock=clock)
    task = asyncio.create_task(streams.run())
    await settle(lambda: "MarksPushed" in order)
    clock.advance(restart_delay(1))
    await settle(lambda: exchange.opened["private"] == 2)
    await stop(task)
    assert exchange.opened == {"private": 2, "public": 1}
    assert sorted(order) == ["MarksPushed", "resync"]


async def test_a_refused_key_is_reported_retried_with_back_off_and_its_recovery_too() -> None:
    order: list[str] = []
    reports: list[tuple[str, str, str | None]] = []
    clock = ManualClock()
    exchange = FakeExchange("acct", clock=clock)
    exchange.fail("private", AuthError(-1002, "key revoked"))
    exchange.fail("private", AuthError(-1002, "key revoked"))
    exchange.push("private", MARK)
    exchange.push("public", MARK)
    streams = Streams(exchange, *recording(order), clock=clock,
                      on_key=lambda a, name, e: reports.append((a, name, e and e.message)))
    task = asyncio.create_task(streams.run())
    await settle(lambda: len(reports) == 1)
    assert order == ["MarksPushed"], "the public stream goes on"
    assert reports == [("acct", "private", "key revoked")]
    clock.advance(auth_retry_delay(1))
    await settle(lambda: len(reports) == 2)
    assert exchange.opened["private"] == 2
    clock.advance(auth_retry_delay(2) - 0.01)
    await settle()
    assert exchange.opened["private"] == 2, "the second retry waits longer"
    clock.advance(0.01)
    await settle(lambda: len(reports) == 3)
    await stop(task)
    assert auth_retry_delay(2) > auth_retry_delay(1)
    assert reports[-1] == ("acct", "private", None), "served again: reported"
    assert order == ["MarksPushed", "MarksPushed"]


async def test_a_first_connect_is_routine_and_a_gap_rest_cannot_cover_is_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    exchange = FakeExchange("acct", clock=clock)
    exchange.push("private", StreamGap(stream="private", reason="connected"))
    exchange.push("private", StreamGap(stream="private",
                                       reason="reconnected after connection closed (1000)"))
    exchange.push("private", StreamGap(stream="private", reason="reconnected after x"))
    covered = [True, True, False]

    async def on_event(account_id: str, event: StreamEvent) -> None:
        pass

    async def resync(account_id: str) -> object:
        return object() if covered.pop(0) else None

    streams = Streams(exchange, on_event, resync, public=False, clock=clock)
    with caplog.at_level(logging.INFO, "guardbot.feeds.streams"):
        task = asyncio.create_task(streams.run())
        await settle(lambda: not covered)
        await settle()
        await stop(task)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("INFO", "private stream of acct connected: account read over REST"),
        ("INFO", "private stream of acct reconnected after connection closed (1000): account "
                 "read over REST"),
        ("WARNING", "private stream gap for acct (reconnected after x): pushes may have been "
                    "missed; the REST resync failed, the poller keeps trying"),
    ]


def test_restart_delay_grows_and_caps() -> None:
    assert [restart_delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


async def test_the_clients_lines_about_a_private_stream_name_its_account() -> None:
    """exchange/ws.py logs connects and reconnects without the account; the private
    stream's name it through the log context, and what a push leads to does not."""
    clock = ManualClock()
    client_log = logging.getLogger("guardbot.exchange.ws")

    class Logging(FakeExchange):
        def private_events(self) -> AsyncGenerator[StreamEvent, None]:
            async def events() -> AsyncGenerator[StreamEvent, None]:
                client_log.warning("private stream subscribed")
                yield MARK
                client_log.warning("private stream: connection closed")
            return events()

        def public_events(self) -> AsyncGenerator[StreamEvent, None]:
            async def events() -> AsyncGenerator[StreamEvent, None]:
                client_log.warning("public stream subscribed")
                yield MARK
                await asyncio.Event().wait()
            return events()

    pushed: list[object] = []

    async def on_event(account_id: str, event: StreamEvent) -> None:
        client_log.warning("handling a push")
        pushed.append(event)

    async def resync(account_id: str) -> object:
        return object()

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter())  # fills in the context, as the daemon's handler
    handler.setFormatter(JsonFormatter())
    client_log.addHandler(handler)
    try:
        streams = Streams(Logging("acct", clock=clock), on_event, resync, clock=clock)
        task = asyncio.create_task(streams.run())
        await settle(lambda: len(pushed) == 2 and "closed" in out.getvalue())
        await stop(task)
    finally:
        client_log.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    accounts = {line["message"]: line.get("account") for line in lines}
    assert accounts["private stream subscribed"] == "acct"
    assert accounts["private stream: connection closed"] == "acct"
    assert accounts["public stream subscribed"] is None
    assert accounts["handling a push"] is None
