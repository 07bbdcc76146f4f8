from __future__ import annotations

import asyncio
import time

import pytest

from guardbot.clock import ManualClock
from guardbot.exchange.limits import (
    DEFAULT_LIMIT,
    LIMITS,
    Limit,
    Priority,
    RateLimiter,
    routine_calls,
)


@pytest.mark.parametrize(
    ("endpoint", "limit"),
    [  # docs/exchange.md §5
        ("POST /v1/position_margin", Limit(10, 1.0)),
        ("GET /v1/positions", Limit(30, 10.0)),
        ("GET /v1/position/{symbol}", Limit(30, 10.0)),
        ("GET /v1/client/info", Limit(10, 60.0)),
        ("GET /v1/client/leverage", Limit(1, 1.0, "ip")),
        ("GET /v1/client/holding", Limit(10, 1.0)),
        ("GET /v1/public/futures", Limit(10, 1.0, "ip")),
    ],
)
def test_documented_limits(endpoint: str, limit: Limit) -> None:
    assert LIMITS[endpoint] == limit


def test_unknown_endpoint_gets_the_default() -> None:
    assert RateLimiter().limit("GET /v1/nope") == DEFAULT_LIMIT


@pytest.mark.parametrize(("calls", "routine"), [(1, 1), (5, 3), (10, 7), (30, 21)])
def test_routine_share(calls: int, routine: int) -> None:
    assert routine_calls(Limit(calls, 1.0)) == routine


async def _timed_calls(limiter: RateLimiter, n: int, priority: Priority, key: str = "k") -> float:
    start = time.monotonic()
    for _ in range(n):
        await limiter.acquire("E", key, priority)
    return time.monotonic() - start


async def test_limiter_holds_a_burst_to_the_window() -> None:
    limiter = RateLimiter({"E": Limit(5, 0.1)})
    assert await _timed_calls(limiter, 5, Priority.URGENT) < 0.05  # within budget: no wait
    assert await _timed_calls(limiter, 1, Priority.URGENT) >= 0.1  # sixth waits a window


async def test_routine_leaves_room_for_urgent_calls() -> None:
    limiter = RateLimiter({"E": Limit(10, 0.2)})
    # Routine traffic may take 7 of 10 slots per window; the 8th must wait.
    assert await _timed_calls(limiter, 7, Priority.ROUTINE) < 0.05
    routine_waiter = asyncio.create_task(_timed_calls(limiter, 1, Priority.ROUTINE))
    # ...while urgent calls still get the 3 reserved slots at once.
    assert await _timed_calls(limiter, 3, Priority.URGENT) < 0.05
    assert await routine_waiter >= 0.2


async def test_keys_are_separate_ip_limits_shared() -> None:
    limiter = RateLimiter({"E": Limit(2, 0.2), "P": Limit(2, 0.2, "ip")})
    assert await _timed_calls(limiter, 2, Priority.URGENT, "a") < 0.05
    assert await _timed_calls(limiter, 2, Priority.URGENT, "b") < 0.05
    start = time.monotonic()
    for key in ("a", "b", "c"):
        await limiter.acquire("P", key, Priority.URGENT)
    assert time.monotonic() - start >= 0.2


async def test_waiters_pass_in_arrival_order_on_the_injected_clock() -> None:
    """The executor dispatches the most endangered position's call first; the limiter must
    not reorder calls waiting for the same window (asyncio-throttle's polling did)."""
    clock = ManualClock()
    limiter = RateLimiter({"E": Limit(2, 1.0)}, clock=clock)
    passed: list[int] = []

    async def call(index: int) -> None:
        await limiter.acquire("E", "k", Priority.URGENT)
        passed.append(index)

    tasks = [asyncio.create_task(call(i)) for i in range(6)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert passed == [0, 1], "two per window"
    clock.advance(1.1)  # one window (with its slack)
    for _ in range(10):
        await asyncio.sleep(0)
    assert passed == [0, 1, 2, 3]
    clock.advance(1.1)
    await asyncio.gather(*tasks)
    assert passed == [0, 1, 2, 3, 4, 5]
