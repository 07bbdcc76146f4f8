"""The clock: manual time, and the virtual-time event loop the backtest runs on."""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest

from guardbot.clock import SYSTEM_CLOCK, ManualClock, VirtualTimeLoop, run_virtual


async def test_manual_sleepers_wake_in_deadline_order() -> None:
    """``advance`` wakes every sleeper due by its end; they run afterwards, in order (on a
    ``VirtualTimeLoop`` each runs at its own deadline, see below)."""
    clock = ManualClock(start_ms=1_000)
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now_ms()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 0.5))]
    await asyncio.sleep(0)
    clock.advance(0.4)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(0.1)
    await asyncio.sleep(0)
    assert woke == [("a", 1_500)]
    clock.advance(5.0)
    await asyncio.gather(*tasks)
    assert woke == [("a", 1_500), ("b", 6_500)]


def test_manual_time_does_not_go_back() -> None:
    clock = ManualClock()
    with pytest.raises(ValueError, match="back"):
        clock.advance(-1)


def test_a_virtual_day_takes_as_long_as_its_work() -> None:
    clock = ManualClock(start_ms=0)
    seen: list[int] = []

    async def main() -> None:
        async def ticker() -> None:
            for _ in range(86_400):
                await clock.sleep(1)
            seen.append(clock.now_ms())

        async def loop_timer() -> None:  # asyncio's own timers run on the same time
            await asyncio.sleep(3600)
            seen.append(clock.now_ms())

        await asyncio.gather(ticker(), loop_timer())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(10):
                await asyncio.Event().wait()
        seen.append(clock.now_ms())

    started = time.perf_counter()
    run_virtual(main(), clock)
    assert seen == [3_600_000, 86_400_000, 86_410_000]
    assert time.perf_counter() - started < 10


def test_the_system_clock_reads_the_machine() -> None:
    assert abs(SYSTEM_CLOCK.now_ms() - time.time() * 1000) < 1000
    assert SYSTEM_CLOCK.monotonic() <= time.monotonic()


def test_work_in_a_thread_takes_no_virtual_time() -> None:
    """While a thread works (the audit log's fsync), virtual time stands still: it must not
    jump to the next timer, as if the write had lasted until then."""
    clock = ManualClock(start_ms=0)
    spent: list[int] = []

    async def main() -> None:
        ticker = asyncio.create_task(clock.sleep(10))
        before = clock.now_ms()
        await asyncio.to_thread(time.sleep, 0.05)
        spent.append(clock.now_ms() - before)
        await ticker
        spent.append(clock.now_ms())

    run_virtual(main(), clock)
    assert spent == [0, 10_000]


def test_the_virtual_loop_runs_callbacks_in_order_and_refuses_them_once_closed() -> None:
    clock = ManualClock()
    loop = VirtualTimeLoop(clock)
    seen: list[object] = []
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="none")
    context = contextvars.copy_context()
    context.run(marker.set, "given")
    loop.call_soon(seen.append, 1)
    loop.call_soon(lambda: seen.append(marker.get()), context=context)
    handle = loop.call_soon(seen.append, 3)
    loop.call_soon(seen.append, 4)
    handle.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [1, "given", 4]
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(seen.append, 5)
