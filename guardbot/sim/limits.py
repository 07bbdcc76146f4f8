"""Rate limits per Orderly key (or per IP) and endpoint, from docs/exchange.md §5.

Sliding windows: a request is allowed when fewer than ``limit`` requests of the same bucket
were allowed in the last ``window_s`` seconds (the real window type is unconfirmed; a sliding
window is the strictest reading of "N per window"). Rejected requests do not count. Time is
passed in, so tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    limit: int
    window_s: float
    per_ip: bool = False


# (method, route pattern) -> limit. Route patterns are aiohttp's canonical paths.
LIMITS: dict[tuple[str, str], Limit] = {
    ("POST", "/v1/position_margin"): Limit(10, 1),
    ("GET", "/v1/positions"): Limit(30, 10),
    ("GET", "/v1/position/{symbol}"): Limit(30, 10),
    ("POST", "/v1/client/leverages"): Limit(5, 60),
    ("POST", "/v1/client/leverage"): Limit(5, 60),
    ("GET", "/v1/client/leverage"): Limit(1, 1, per_ip=True),
    ("GET", "/v1/client/info"): Limit(10, 60),
    ("GET", "/v1/client/aggregate/holding"): Limit(1, 60),
    ("GET", "/v1/client/holding"): Limit(10, 1),
    ("GET", "/v1/account_info"): Limit(10, 1),
    ("POST", "/v1/order"): Limit(10, 1),
    ("DELETE", "/v1/order"): Limit(10, 1),
    ("GET", "/v1/orders"): Limit(10, 1),
    ("POST", "/v1/client/margin_mode"): Limit(10, 1),
    ("GET", "/v1/public/info"): Limit(10, 1, per_ip=True),
    ("GET", "/v1/public/info/{symbol}"): Limit(10, 1, per_ip=True),
    ("GET", "/v1/public/futures"): Limit(10, 1, per_ip=True),
    ("GET", "/v1/public/futures/{symbol}"): Limit(10, 1, per_ip=True),
    ("GET", "/v1/public/system_info"): Limit(1, 1, per_ip=True),
}


class RateLimiter:
    """Counts requests per (caller, endpoint) and says whether one more is allowed."""

    def __init__(self, limits: dict[tuple[str, str], Limit] = LIMITS) -> None:
        self.limits = limits
        self._history: dict[tuple[str, str, str], deque[float]] = {}

    def allow(
        self, method: str, route: str, orderly_key: str | None, ip: str, now_s: float
    ) -> bool:
        """Record the request and return True, or return False if it is over the limit.
        Routes without a documented limit, and keyed routes without a key, are not limited."""
        limit = self.limits.get((method, route))
        if limit is None:
            return True
        caller = ip if limit.per_ip else orderly_key
        if caller is None:
            return True
        history = self._history.setdefault((caller, method, route), deque())
        while history and history[0] <= now_s - limit.window_s:
            history.popleft()
        if len(history) >= limit.limit:
            return False
        history.append(now_s)
        return True
