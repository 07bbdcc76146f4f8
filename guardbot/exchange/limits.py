"""Rate limits: the one home of the exchange's rate numbers.

``LIMITS`` is the exchange's published table (docs/exchange.md, "Rate limits"). Orderly
counts per key ("per user") or per IP; ``RateLimiter`` keeps one sliding window per (key or
IP, endpoint), so several accounts in one process share the IP budgets and each key has its
own. Windows run on the injected ``Clock`` (virtual time in tests and the backtest) and
serve their waiters first come, first served, so calls keep the order the executor
dispatched them in (most endangered first). asyncio-throttle, used before, reads
``time.monotonic`` itself and polls every few milliseconds: it can neither run on a virtual
clock nor keep that order.

Priority: routine calls (polling, sweeps) may use only ``ROUTINE_SHARE`` of an endpoint's
budget, urgent calls (margin for a position at risk, and the reads that verify it) all of it,
so a top-up never waits behind the poller.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from guardbot.clock import SYSTEM_CLOCK, Clock


@dataclass(frozen=True, slots=True)
class Limit:
    calls: int
    period_s: float
    per: Literal["key", "ip"] = "key"


# docs/exchange.md §5 / [OAS]. Keyed by "METHOD path-template", the label used in metrics.
LIMITS: dict[str, Limit] = {
    "POST /v1/position_margin": Limit(10, 1.0),
    "GET /v1/positions": Limit(30, 10.0),
    "GET /v1/position/{symbol}": Limit(30, 10.0),
    "GET /v1/client/holding": Limit(10, 1.0),
    "GET /v1/liquidations": Limit(10, 1.0),
    "GET /v1/account_info": Limit(10, 1.0),
    "GET /v1/client/info": Limit(10, 60.0),
    "GET /v1/client/key_info": Limit(10, 60.0),
    "GET /v1/client/leverage": Limit(1, 1.0, "ip"),
    "GET /v1/public/info": Limit(10, 1.0, "ip"),
    "GET /v1/public/futures": Limit(10, 1.0, "ip"),
    "GET /v1/public/system_info": Limit(1, 1.0, "ip"),
}
# Undocumented endpoints get the strictest common limit rather than none.
DEFAULT_LIMIT = Limit(10, 1.0)

# Our clock and the exchange's windows are not aligned and requests take varying time to
# arrive: widen every window so a burst we allow is never a burst the exchange rejects.
WINDOW_SLACK = 1.1
ROUTINE_SHARE = 0.7


class Priority(enum.IntEnum):
    URGENT = 0
    ROUTINE = 1


def routine_calls(limit: Limit) -> int:
    """How many calls per window routine traffic may take (at least one)."""
    return max(1, math.floor(limit.calls * ROUTINE_SHARE))


class Window:
    """At most ``calls`` acquisitions in any ``period_s`` of ``clock`` time, granted in
    arrival order."""

    def __init__(self, calls: int, period_s: float, clock: Clock) -> None:
        self.calls = calls
        self.period_s = period_s
        self._clock = clock
        self._granted: deque[float] = deque()
        # Wakes its waiters first in, first out; one per event loop (a process-wide limiter
        # may outlive the loop that first used it).
        self._turns: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def wait_s(self) -> float:
        """How long until a slot frees up (0: one is free now)."""
        now = self._clock.monotonic()
        while self._granted and now - self._granted[0] >= self.period_s:
            self._granted.popleft()
        if len(self._granted) < self.calls:
            return 0.0
        return self._granted[0] + self.period_s - now

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        turn = self._turns.get(loop)
        if turn is None:
            self._turns = {loop: (turn := asyncio.Lock())}
        async with turn:
            while (wait := self.wait_s()) > 0:
                await self._clock.sleep(wait)
            self._granted.append(self._clock.monotonic())


class RateLimiter:
    """Windows per (key or IP, endpoint). Share one instance per process."""

    def __init__(self, limits: dict[str, Limit] | None = None, clock: Clock = SYSTEM_CLOCK
                 ) -> None:  # fmt: skip
        self._limits = LIMITS if limits is None else limits
        self._clock = clock
        self._windows: dict[tuple[str, str, Priority], Window] = {}

    def limit(self, endpoint: str) -> Limit:
        return self._limits.get(endpoint, DEFAULT_LIMIT)

    def _window(self, scope: str, endpoint: str, priority: Priority) -> Window:
        key = (scope, endpoint, priority)
        window = self._windows.get(key)
        if window is None:
            limit = self.limit(endpoint)
            calls = limit.calls if priority is Priority.URGENT else routine_calls(limit)
            window = Window(calls, limit.period_s * WINDOW_SLACK, self._clock)
            self._windows[key] = window
        return window

    async def acquire(
        self, endpoint: str, orderly_key: str, priority: Priority, host: str = ""
    ) -> None:
        """Wait until a call to ``endpoint`` on ``host`` fits under its limit.

        Every call takes a slot in the endpoint's full budget; routine calls first take one in
        the smaller routine budget too, which leaves the rest for urgent calls.
        """
        scope = f"ip@{host}" if self.limit(endpoint).per == "ip" else orderly_key
        if priority is Priority.ROUTINE:
            await self._window(scope, endpoint, Priority.ROUTINE).acquire()
        await self._window(scope, endpoint, Priority.URGENT).acquire()


SHARED_LIMITER = RateLimiter()
"""The process-wide limiter: limits are per key and per IP, not per client object."""
