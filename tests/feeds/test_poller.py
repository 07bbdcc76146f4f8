"""The poller against the shipped in-memory exchange (``guardbot.exchange.fake``)."""

from __future__ import annotations

import asyncio

from guardbot.clock import ManualClock
from guardbot.domain import AccountSnapshot
from guardbot.exchange.errors import AuthError, RetryLater
from guardbot.exchange.fake import FakeExchange
from guardbot.feeds.poller import Poller


async def test_polls_each_account_on_its_interval_and_faster_when_urgent() -> None:
    calm, hot = FakeExchange("calm"), FakeExchange("hot")
    seen: list[str] = []

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        seen.append(snapshot.account_id)

    poller = Poller(
        {"calm": calm, "hot": hot},
        on_snapshot,
        interval_s=10.0,
        fast_interval_s=0.02,
        is_urgent=lambda account_id: account_id == "hot",
    )
    async with poller:
        await asyncio.sleep(0.3)
    # the calm account is polled once (its first tick), the urgent one every fast tick
    assert len(calm.reads) == 1
    assert len(hot.reads) >= 5
    assert seen.count("calm") == 1
    assert seen.count("hot") == len(hot.reads)


async def test_due_follows_the_clock() -> None:
    clock = ManualClock()
    exchange = FakeExchange("a", clock=clock)
    urgent = [False]

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        pass

    poller = Poller(
        {"a": exchange},
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
    exchange = FakeExchange("a")
    seen: list[AccountSnapshot] = []

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        seen.append(snapshot)

    poller = Poller(
        {"a": exchange},
        on_snapshot,
        interval_s=1.0,
        fast_interval_s=1.0,
    )
    exchange.read_failure = lambda: RetryLater("exchange is down")
    assert await poller.poll_now("a") is None
    assert seen == []
    exchange.read_failure = None
    snapshot = await poller.poll_now("a")
    assert snapshot is not None and seen == [snapshot]
    assert poller.polls["a"] == 1


async def test_concurrent_polls_of_one_account_are_serial() -> None:
    concurrent = 5
    exchange = FakeExchange("a")
    running = 0
    peak = 0

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    poller = Poller({"a": exchange}, on_snapshot, interval_s=1, fast_interval_s=1)
    await asyncio.gather(*(poller.poll_now("a") for _ in range(concurrent)))
    assert len(exchange.reads) == concurrent
    assert peak == 1


async def test_a_refused_key_is_reported_and_polled_with_back_off_until_it_works() -> None:
    clock = ManualClock()
    exchange = FakeExchange("a", clock=clock)
    reports: list[tuple[str, str, str | None]] = []

    async def on_snapshot(snapshot: AccountSnapshot) -> None:
        pass

    poller = Poller({"a": exchange}, on_snapshot, interval_s=1.0, fast_interval_s=1.0,
                    clock=clock,
                    on_key=lambda a, source, e: reports.append((a, source, e and e.message)))
    exchange.read_failure = lambda: AuthError(-1002, "orderly key is not registered")
    waits = []
    for _ in range(4):
        assert await poller.poll_now("a") is None
        waited = 0.0
        while not poller.due("a"):
            clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    # not every second: 1, 2, 4, 8 s after the refusals (guardbot.feeds.auth_retry_delay)
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert reports == [("a", "rest", "orderly key is not registered")] * 4
    exchange.read_failure = None  # the operator registered the key
    assert await poller.poll_now("a") is not None
    assert reports[-1] == ("a", "rest", None)
    clock.advance(1.0)
    assert poller.due("a"), "back on its interval"
