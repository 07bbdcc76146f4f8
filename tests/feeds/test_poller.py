from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

from guardbot.clock import ManualClock
from guardbot.domain import AccountSnapshot
from guardbot.exchange.errors import RetryLater
from guardbot.exchange.port import StreamEvent
from guardbot.feeds.poller import Poller


class CountingExchange:
    """Answers get_positions with an empty snapshot; fails when told to."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.calls = 0
        self.fail = False

    async def get_positions(self) -> AccountSnapshot:
        self.calls += 1
        if self.fail:
            raise RetryLater("exchange is down")
        return AccountSnapshot(
            account_id=self.account_id,
            free_collateral=Decimal(100),
            total_collateral_value=Decimal(100),
            positions=(),
            exchange_ms=self.calls,
            received_ms=self.calls,
        )

    def private_events(self) -> AsyncIterator[StreamEvent]:  # pragma: no cover - unused
        raise NotImplementedError


async def test_polls_each_account_on_its_interval_and_faster_when_urgent() -> None:
    calm, hot = CountingExchange("calm"), CountingExchange("hot")
    seen: list[str] = []

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        seen.append(snapshot.account_id)

    poller = Poller(
        {"calm": calm, "hot": hot},  # type: ignore[dict-item]
        on_snapshot,
        interval_s=10.0,
        fast_interval_s=0.02,
        is_urgent=lambda account_id: account_id == "hot",
    )
    async with poller:
        await asyncio.sleep(0.3)
    # the calm account is polled once (its first tick), the urgent one every fast tick
    assert calm.calls == 1
    assert hot.calls >= 5
    assert seen.count("calm") == 1
    assert seen.count("hot") == hot.calls


async def test_due_follows_the_clock() -> None:
    clock = ManualClock()
    exchange = CountingExchange("a")
    urgent = [False]

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        pass

    poller = Poller(
        {"a": exchange},  # type: ignore[dict-item]
        on_snapshot,
        interval_s=5.0,
        fast_interval_s=1.0,
        is_urgent=lambda _a: urgent[0],
        clock=clock,
    )
    assert poller.due("a")
    await poller.poll_now("a")
    assert not poller.due("a")
    clock.advance(1.0)
    assert not poller.due("a")
    urgent[0] = True
    assert poller.due("a")
    urgent[0] = False
    clock.advance(4.0)
    assert poller.due("a")


async def test_a_failed_poll_is_not_passed_on_and_the_next_one_is() -> None:
    exchange = CountingExchange("a")
    seen: list[AccountSnapshot] = []

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        seen.append(snapshot)

    poller = Poller(
        {"a": exchange},  # type: ignore[dict-item]
        on_snapshot,
        interval_s=1.0,
        fast_interval_s=1.0,
    )
    exchange.fail = True
    assert await poller.poll_now("a") is None
    assert seen == []
    exchange.fail = False
    snapshot = await poller.poll_now("a")
    assert snapshot is not None and seen == [snapshot]
    assert poller.polls["a"] == 1


async def test_concurrent_polls_of_one_account_are_serial() -> None:
    concurrent = 5
    exchange = CountingExchange("a")
    running = 0
    peak = 0

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    poller = Poller({"a": exchange}, on_snapshot, interval_s=1, fast_interval_s=1)  # type: ignore[dict-item]
    await asyncio.gather(*(poller.poll_now("a") for _ in range(concurrent)))
    assert exchange.calls == concurrent
    assert peak == 1
