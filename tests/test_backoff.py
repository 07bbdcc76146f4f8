"""Back-off: one formula for every retry and hold-back."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardbot.backoff import backoff, delay, retry_delay


@given(
    base=st.floats(0.01, 5), cap=st.floats(0.01, 60), seed=st.integers(0, 2**32),
    n=st.integers(1, 30),
)
def test_backoff_is_bounded_jittered_and_grows_to_the_cap(
    base: float, cap: float, seed: int, n: int
) -> None:
    delays = backoff(base, cap, random.Random(seed))
    ceiling = base
    for _ in range(n):
        delay = next(delays)
        expected = min(cap, ceiling)
        assert expected / 2 <= delay <= expected
        ceiling *= 2
    # The same seed gives the same delays: pure given its random source.
    again = backoff(base, cap, random.Random(seed))
    first = backoff(base, cap, random.Random(seed))
    assert [next(again) for _ in range(5)] == [next(first) for _ in range(5)]


def test_backoff_table() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    delays = backoff(0.5, 4.0, Top())
    assert [next(delays) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(
    ("backoff_s", "retry_after_s", "expected"),
    [(0.5, None, 0.5), (0.5, 2.0, 2.0), (3.0, 1.0, 3.0)],
)
def test_retry_delay(backoff_s: float, retry_after_s: float | None, expected: float) -> None:
    assert retry_delay(backoff_s, retry_after_s) == expected


def test_without_jitter_the_delays_are_exact() -> None:
    delays = backoff(30, 45)
    assert [next(delays) for _ in range(3)] == [30, 45, 45]
    assert delay(1000, 1.0, 8.0) == 8.0, "no overflow however many failures"
