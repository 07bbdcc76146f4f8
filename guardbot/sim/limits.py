"""The exchange's rate limits per Orderly key (or per IP) and endpoint, from
docs/exchange.md §5, as the simulator enforces them.

Sliding windows: a request is allowed when fewer than ``limit`` requests of the same bucket
were allowed in the last ``window_s`` seconds (the real window type is unconfirmed; a sliding
window is the strictest reading of "N per window"). Rejected requests do not count. Time is
passed in, so tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointLimit:
    limit: int
    window_s: float
    per_ip: bool = False


# (method, route pattern) -> limit. Route patterns are aiohttp's canonical paths.
LIMITS: dict[tuple[str, str], EndpointLimit] = {
    ("POST", "/v1/position_margin"): EndpointLimit(10, 1),
    ("GET", "/v1/positions"): EndpointLimit(30, 10),
    ("GET", "/v1/position/{symbol}"): EndpointLimit(30, 10),
    ("POST", "/v1/client/leverages"): EndpointLimit(5, 60),
    ("POST", "/v1/client/leverage"): EndpointLimit(5, 60),
    ("GET", "/v1/client/leverage"): EndpointLimit(1, 1, per_ip=True),
    ("GET", "/v1/client/info"): EndpointLimit(10, 60),
    ("GET", "/v1/client/key_info"): EndpointLimit(10, 60),
    ("GET", "/v1/client/aggregate/holding"): EndpointLimit(1, 60),
    ("GET", "/v1/client/holding"): EndpointLimit(10, 1),
    ("GET", "/v1/account_info"): EndpointLimit(10, 1),
    ("POST", "/v1/order"): EndpointLimit(10, 1),
    ("DELETE", "/v1/order"): EndpointLimit(10, 1),
    ("GET", "/v1/orders"): EndpointLimit(10, 1),
    ("POST", "/v1/client/margin_mode"): EndpointLimit(10, 1),
    ("GET", "/v1/public/info"): EndpointLimit(10, 1, per_ip=True),
    ("GET", "/v1/public/info/{symbol}"): EndpointLimit(10, 1, per_ip=True),
    ("GET", "/v1/public/futures"): EndpointLimit(10, 1, per_ip=True),
    ("GET", "/v1/public/futures/{symbol}"): EndpointLimit(10, 1, per_ip=True),
    ("GET", "/v1/public/system_info"): EndpointLimit(1, 1, per_ip=True),
}


class LimitEnforcer:
    """Counts requests per (caller, endpoint) and says whether one more is allowed: the
    exchange's side of the limits, which refuses (429) where the bot's limiter waits."""

    def __init__(self, limits: dict[tuple[str, str], EndpointLimit] = LIMITS) -> None:
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
