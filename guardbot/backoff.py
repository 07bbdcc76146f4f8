"""Back-off: how long to wait after the n-th failure in a row. The one home of that formula
(docs/architecture.md, "Where things live"): exchange retries, WebSocket reconnects, stream
restarts, the audit writer, start-up patience and the executor's hold-back after a
rejection all use it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator


def delay(attempt: int, base_s: float, cap_s: float, factor: float = 2.0) -> float:
    """The un-jittered wait after failure number ``attempt`` (0 = the first):
    ``min(cap_s, base_s * factor**attempt)``."""
    if attempt > 64:  # base * 2**64 is beyond any cap; avoid float overflow
        return cap_s
    return min(cap_s, base_s * factor**attempt)


def backoff(
    base_s: float, cap_s: float, rng: random.Random | None = None, factor: float = 2.0
) -> Iterator[float]:
    """Endless delays growing from ``base_s`` to ``cap_s``. With ``rng``, the n-th is uniform
    in [d/2, d] ("equal jitter": spread out, never near zero); without, exactly d."""
    for attempt in itertools.count():
        wait = delay(attempt, base_s, cap_s, factor)
        yield wait if rng is None else wait / 2 + rng.uniform(0, wait / 2)


def retry_delay(backoff_s: float, retry_after_s: float | None) -> float:
    """Wait at least what the exchange asked for (429), else the backoff delay."""
    return max(backoff_s, retry_after_s or 0.0)
