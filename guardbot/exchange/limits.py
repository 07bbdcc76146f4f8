"""Rate limits, retries and backoff: data plus small pure functions (style.md §6).

``LIMITS`` is orderly-api.md §5 as a table. Orderly counts per key ("per user") or per IP;
``RateLimiter`` keeps one asyncio-throttle ``Throttler`` per (key or IP, endpoint), so several
accounts in one process share the IP budgets and each key has its own.

Priority: routine calls (polling, sweeps) may use only ``ROUTINE_SHARE`` of an endpoint's
budget, urgent calls (margin for a position at risk, and the reads that verify it) all of it,
so a top-up never waits behind the poller.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from asyncio_throttle.throttler import Throttler


@dataclass(frozen=True, slots=True)
class Limit:
    calls: int
    period_s: float
    per: Literal["key", "ip"] = "key"


# orderly-api.md §5 / [OAS]. Keyed by "METHOD path-template", the label used in metrics.
LIMITS: dict[str, Limit] = {
    "POST /v1/position_margin": Limit(10, 1.0),
    "GET /v1/positions": Limit(30, 10.0),
    "GET /v1/position/{symbol}": Limit(30, 10.0),
    "GET /v1/client/holding": Limit(10, 1.0),
    "GET /v1/account_info": Limit(10, 1.0),
    "GET /v1/client/info": Limit(10, 60.0),
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


class RateLimiter:
    """Throttlers per (key or IP, endpoint). Share one instance per process."""

    def __init__(self, limits: dict[str, Limit] | None = None) -> None:
        self._limits = LIMITS if limits is None else limits
        self._throttlers: dict[tuple[str, str, Priority], Throttler] = {}

    def limit(self, endpoint: str) -> Limit:
        return self._limits.get(endpoint, DEFAULT_LIMIT)

    def _throttler(self, scope: str, endpoint: str, priority: Priority) -> Throttler:
        key = (scope, endpoint, priority)
        throttler = self._throttlers.get(key)
        if throttler is None:
            limit = self.limit(endpoint)
            calls = limit.calls if priority is Priority.URGENT else routine_calls(limit)
            throttler = Throttler(calls, limit.period_s * WINDOW_SLACK, retry_interval=0.005)
            self._throttlers[key] = throttler
        return throttler

    async def acquire(
        self, endpoint: str, orderly_key: str, priority: Priority, host: str = ""
    ) -> None:
        """Wait until a call to ``endpoint`` on ``host`` fits under its limit.

        Every call takes a slot in the endpoint's full budget; routine calls first take one in
        the smaller routine budget too, which leaves the rest for urgent calls.
        """
        scope = f"ip@{host}" if self.limit(endpoint).per == "ip" else orderly_key
        # asyncio-throttle ships no annotations, hence the ignores.
        if priority is Priority.ROUTINE:
            await self._throttler(scope, endpoint, Priority.ROUTINE).acquire()  # type: ignore[no-untyped-call]
        await self._throttler(scope, endpoint, Priority.URGENT).acquire()  # type: ignore[no-untyped-call]


SHARED_LIMITER = RateLimiter()
"""The process-wide limiter: limits are per key and per IP, not per client object."""


def backoff(
    base_s: float, cap_s: float, rng: random.Random, factor: float = 2.0
) -> Iterator[float]:
    """Endless jittered exponential delays: the n-th is uniform in [d/2, d] with
    ``d = min(cap_s, base_s * factor**n)`` ("equal jitter": spread out, never near zero)."""
    ceiling = base_s
    while True:
        delay = min(cap_s, ceiling)
        yield delay / 2 + rng.uniform(0, delay / 2)
        ceiling = min(cap_s, ceiling * factor)


def retry_delay(backoff_s: float, retry_after_s: float | None) -> float:
    """Wait at least what the exchange asked for (429), else the backoff delay."""
    return max(backoff_s, retry_after_s or 0.0)
