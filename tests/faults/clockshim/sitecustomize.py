"""A skewed wall clock for the fault suite, loaded by Python at start-up when this folder is
on PYTHONPATH. ``SIGUSR1`` toggles a skew of ``GUARDBOT_TEST_CLOCK_SKEW_S`` seconds on
``time.time``/``time.time_ns`` (the host clock drifting); monotonic time is untouched."""

import os
import signal
import time

_SKEW_NS = int(float(os.environ.get("GUARDBOT_TEST_CLOCK_SKEW_S", "0")) * 1_000_000_000)
_skewed = [False]
_time, _time_ns = time.time, time.time_ns


def _toggle(signum: int, frame: object) -> None:
    _skewed[0] = not _skewed[0]


def _skewed_time_ns() -> int:
    return _time_ns() + (_SKEW_NS if _skewed[0] else 0)


def _skewed_time() -> float:
    return _skewed_time_ns() / 1_000_000_000


if _SKEW_NS:
    signal.signal(signal.SIGUSR1, _toggle)
    time.time, time.time_ns = _skewed_time, _skewed_time_ns
