"""The one source of time (docs/architecture.md, "Time").

Every part that reads the time or waits takes a ``Clock``: the daemon gives them all
``SYSTEM_CLOCK``; tests and ``guardbot backtest`` give them a ``ManualClock``, so the same
decision path runs in virtual time. Times are integer milliseconds since the epoch
(``now_ms``, the exchange's unit) for anything stored or compared with exchange data, and
float seconds (``monotonic``) for measuring intervals.

``ManualClock`` moves only when told: ``advance`` / ``advance_to`` from a test, or, on a
``VirtualTimeLoop``, whenever every task is waiting (the loop jumps to the next wake-up
instead of sleeping, so a simulated day takes as long as its work).
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import selectors
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Clock(Protocol):
    """Wall time, monotonic time and waiting, from one place."""

    def now_ms(self) -> int:
        """Milliseconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for intervals."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The machine's clocks and ``asyncio.sleep``."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()

# 2026-01-01T00:00:00Z: a fixed, readable start for virtual time.
DEFAULT_START_MS = 1_767_225_600_000


class ManualClock:
    """Virtual time, moved by ``advance``/``advance_to`` (or by a ``VirtualTimeLoop``).

    ``monotonic`` counts seconds from the clock's start (small numbers keep float time
    exact to the nanosecond); ``now_ms`` is ``start_ms`` plus that. Sleepers wake in
    deadline order, each at its exact time.
    """

    def __init__(self, start_ms: int = DEFAULT_START_MS) -> None:
        self._start_ms = start_ms
        self._elapsed = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"ManualClock(now_ms={self.now_ms()})"

    def now_ms(self) -> int:
        return self._start_ms + int(self._elapsed * 1000)

    def monotonic(self) -> float:
        return self._elapsed

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._elapsed + seconds, next(self._order), future))
        await future

    def next_wakeup(self) -> float | None:
        """When (``monotonic``) the earliest sleeper is due, or ``None``."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled while sleeping
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due by then (they run at the next
        turn of the event loop)."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self.advance_to(self._elapsed + seconds)

    def set_ms(self, ms: int) -> None:
        """Put the wall clock at ``ms``: forward like ``advance``; back only while nobody
        sleeps (for writing history at chosen times in tests)."""
        target = (ms - self._start_ms) / 1000
        if target >= self._elapsed:
            self.advance_to(target)
        elif self.next_wakeup() is not None:
            raise ValueError("time does not go back while tasks sleep on it")
        else:
            self._elapsed = target

    def advance_to(self, monotonic: float) -> None:
        """Move time to ``monotonic`` (seconds from the start), waking sleepers due."""
        if monotonic < self._elapsed:
            raise ValueError("time does not go back")
        while (due := self.next_wakeup()) is not None and due <= monotonic:
            _, _, future = heapq.heappop(self._sleepers)
            self._elapsed = max(self._elapsed, due)
            future.set_result(None)
        self._elapsed = monotonic


class _InstantSelector(selectors.BaseSelector):
    """A selector that never blocks while time can move instead: when the loop has
    nothing ready, time jumps to its next timer or the clock's next sleeper. While real
    work runs in a thread (``busy``), time stands still and the selector waits for it."""

    def __init__(self, clock: ManualClock, busy: Callable[[], bool]) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock
        self._busy = busy

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if self._busy():
            # A thread's result wakes the loop (its self-pipe): time must not jump past
            # work that takes real time, or a 1 ms fsync would last until the next timer.
            return self._real.select(None)
        now = self._clock.monotonic()
        target = self._clock.next_wakeup()
        if timeout is not None:
            loop_due = now + timeout
            target = loop_due if target is None else min(target, loop_due)
        if target is None:
            # Nothing scheduled in virtual time: only the outside world (a thread) can
            # wake the loop, so wait for it for real.
            return self._real.select(None)
        self._clock.advance_to(max(target, now))
        return []


class _Handle(asyncio.Handle):
    """``asyncio.Handle`` without its debug-mode bookkeeping (``VirtualTimeLoop`` makes
    these only outside debug mode)."""

    __slots__ = ()

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...],
                 loop: asyncio.AbstractEventLoop, context: contextvars.Context | None
                 ) -> None:  # fmt: skip
        self._context = contextvars.copy_context() if context is None else context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is a ``ManualClock`` that jumps whenever every task
    waits. For code with no real I/O (the backtest, sans-socket tests): ``asyncio.sleep``,
    timeouts and ``clock.sleep`` all run in virtual time, deterministically. Work handed to
    a thread (``asyncio.to_thread``: the audit log's fsync and database writes) takes no
    virtual time: the clock stands still until it is done."""

    def __init__(self, clock: ManualClock) -> None:
        self._threads = 0
        super().__init__(selector=_InstantSelector(clock, lambda: self._threads > 0))
        self.clock = clock

    def time(self) -> float:
        return self.clock.monotonic()

    def call_soon(self, callback: Callable[[*Ts], object], *args: *Ts,
                  context: contextvars.Context | None = None) -> asyncio.Handle:  # fmt: skip
        """``call_soon`` as asyncio's, in the same FIFO order, with less bookkeeping: every
        wake-up of every task passes here, and a simulated day has millions of them."""
        if self._debug:  # type: ignore[attr-defined]
            return super().call_soon(callback, *args, context=context)
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        handle = _Handle(callback, args, self, context)
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self._threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future[Any]) -> None:
        self._threads -= 1


def run_virtual(main: Coroutine[Any, Any, T], clock: ManualClock) -> T:
    """Run ``main`` to completion on a ``VirtualTimeLoop`` of ``clock``."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
