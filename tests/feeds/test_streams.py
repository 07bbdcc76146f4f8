from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from guardbot.domain import MarkPrice
from guardbot.exchange.errors import AuthError, RetryLater
from guardbot.exchange.port import MarksPushed, StreamEvent, StreamGap
from guardbot.feeds.streams import Streams, restart_delay

MARK = MarksPushed(marks=(MarkPrice("PERP_ETH_USDC", Decimal("2000"), 1),))


class ScriptedExchange:
    """Replays scripted private-stream sessions; each session ends with an item or error."""

    def __init__(self, sessions: list[list[StreamEvent | Exception]]) -> None:
        self.account_id = "acct"
        self.sessions = sessions
        self.opened = 0

    def private_events(self) -> AsyncIterator[StreamEvent]:
        script = self.sessions[min(self.opened, len(self.sessions) - 1)]
        self.opened += 1

        async def events() -> AsyncIterator[StreamEvent]:
            for item in script:
                if isinstance(item, Exception):
                    raise item
                yield item
            await asyncio.Event().wait()  # then stay open

        return events()

    def public_events(self) -> AsyncIterator[StreamEvent]:  # pragma: no cover - unused
        raise NotImplementedError


async def test_a_gap_resyncs_before_it_is_passed_on() -> None:
    order: list[str] = []
    gap = StreamGap(stream="private", reason="reconnected")
    exchange = ScriptedExchange([[MARK, gap, MARK]])

    async def on_event(account_id: str, event: StreamEvent) -> None:
        order.append(type(event).__name__)

    async def resync(account_id: str) -> None:
        assert account_id == "acct"
        order.append("resync")

    streams = Streams(exchange, on_event, resync, public=False)  # type: ignore[arg-type]
    task = asyncio.create_task(streams.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert order == ["MarksPushed", "resync", "StreamGap", "MarksPushed"]


async def test_a_failed_stream_is_reopened_after_a_resync() -> None:
    order: list[str] = []
    exchange = ScriptedExchange([[MARK, RetryLater("dropped")], [MARK]])

    async def on_event(account_id: str, event: StreamEvent) -> None:
        order.append(type(event).__name__)

    async def resync(account_id: str) -> None:
        order.append("resync")

    streams = Streams(exchange, on_event, resync, public=False)  # type: ignore[arg-type]
    task = asyncio.create_task(streams.run())
    await asyncio.sleep(restart_delay(1) + 0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert exchange.opened == 2
    assert order == ["MarksPushed", "resync", "MarksPushed"]


async def test_an_auth_error_stops_the_streams() -> None:
    exchange = ScriptedExchange([[AuthError(-1002, "key revoked")]])

    async def ignore(*_: object) -> None:
        pass

    streams = Streams(exchange, ignore, ignore, public=False)  # type: ignore[arg-type]
    with pytest.raises(ExceptionGroup) as caught:
        await streams.run()
    assert caught.group_contains(AuthError)


def test_restart_delay_grows_and_caps() -> None:
    assert [restart_delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
