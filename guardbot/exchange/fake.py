"""``FakeExchange``: an in-memory ``Exchange`` (``guardbot.exchange.port``) for tests.

Shipped for plugin authors and used by guardbot's own tests: no sockets, no simulator, every
outcome of ``POST /v1/position_margin`` forced exactly, including the ones a real exchange
produces only by bad luck (the answer lost after the change was applied, a change that lands
after its call timed out). Positions, holdings, symbol rules and marks live in memory; every
read is stamped from the injected ``Clock`` (``received_ms``), so with a ``ManualClock`` the
tests decide what time it is. The private and public event streams carry whatever the test
pushes.

    clock = ManualClock()
    exchange = FakeExchange(account_id, clock=clock, positions=[position])
    exchange.script(LOST, rejected(-1101, "Insufficient margin after the operation."))
    exchange.push("private", PositionsPushed((position,)))

What it models and what it does not:

- ``adjust_margin`` follows the next scripted ``Outcome`` (``OK`` once the script is empty).
  An applied change moves the isolated position's margin, bumps its ``seq`` and
  ``exchange_ms``, and moves the same amount out of (ADD) or back into (REDUCE)
  ``free_collateral``. A call that would be answered has to find an open isolated position
  on the symbol, as on Orderly (-1006 otherwise, docs/exchange.md §3); balances and the
  removable maximum are not checked: script ``rejected(...)`` for those.
- An outcome whose answer is lost (``LOST``, ``TIMEOUT``, ``late``) raises ``Uncertain``
  whatever the exchange did, as a real lost answer does.
- ``read_failure``, while set, makes every position read raise the error it builds.
- Nothing is pushed by the fake itself: a test that wants a push after a margin change
  pushes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Holding,
    Liquidation,
    MarginMode,
    MarkPrice,
    Position,
    SymbolRules,
)
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    RateLimited,
    Rejected,
    Uncertain,
)
from guardbot.exchange.port import Exchange, StreamEvent

StreamName = Literal["private", "public"]
ErrorFactory = Callable[[], BaseException]

# -- scripted outcomes of adjust_margin -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one ``adjust_margin`` call does: whether the exchange applies the change (and
    how long after the call), and what the caller gets back (``error``: built and raised
    per call; ``None`` is a normal answer)."""

    name: str
    applies: bool
    error: ErrorFactory | None = None
    after_ms: int = 0


def _lost_answer() -> Uncertain:
    return Uncertain("read timeout after the request was sent")


OK = Outcome("ok", applies=True)
"""Applied and answered."""
LOST = Outcome("lost", applies=True, error=_lost_answer)
"""Applied, but the answer was lost: ``Uncertain``."""
TIMEOUT = Outcome("timeout", applies=False, error=_lost_answer)
"""Not applied, and no answer: ``Uncertain``."""


def late(after_ms: int) -> Outcome:
    """No answer (``Uncertain``); the exchange applies the change ``after_ms`` later."""
    return Outcome("late", applies=True, error=_lost_answer, after_ms=after_ms)


def rejected(code: int = -1101, message: str = "Insufficient margin after the operation.",
             http_status: int = 400) -> Outcome:
    """Refused with an exchange error code (docs/exchange.md §3); nothing applied."""
    return Outcome("rejected", applies=False,
                   error=lambda: Rejected(code, message, http_status))


def rate_limited(retry_after_s: float = 1.0) -> Outcome:
    """HTTP 429: not applied; ``RateLimited`` with ``retry_after_s``."""
    return Outcome("rate_limited", applies=False,
                   error=lambda: RateLimited("too many requests", retry_after_s=retry_after_s))


def auth_error(code: int = -1002, message: str = "timestamp outside the 300 s window") -> Outcome:
    """A refused key or signature (here: this host's clock is off): not applied."""
    return Outcome("auth_error", applies=False, error=lambda: AuthError(code, message))


def raises(error: ErrorFactory, *, applies: bool = False) -> Outcome:
    """Raise whatever ``error`` builds (a bug below the caller, say)."""
    return Outcome("raises", applies=applies, error=error)


# -- what the test can look at afterwards ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarginCall:
    """One ``adjust_margin`` call as it reached the exchange."""

    symbol: str
    kind: ActionKind
    amount: Decimal
    at_ms: int
    outcome: str


@dataclass(frozen=True, slots=True)
class PositionRead:
    """One position read: ``symbol`` for ``get_position``, ``None`` for ``get_positions``;
    recorded when it was asked for, whether or not it succeeded."""

    symbol: str | None
    at_ms: int
    urgent: bool


class FakeExchange:
    """One account on an in-memory exchange (see the module docstring).

    ``calls``, ``reads`` and ``opened`` (stream name -> how many times it was opened) record
    what the code under test did. ``gate``, when set to an unset ``asyncio.Event``, holds
    every margin call on the wire until the test sets it; ``entered`` is set as soon as a
    call arrives.
    """

    def __init__(
        self,
        account_id: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        positions: Iterable[Position] = (),
        holdings: Iterable[Holding] = (),
        rules: Mapping[str, SymbolRules] | None = None,
        marks: Mapping[str, MarkPrice] | None = None,
        free_collateral: Decimal = Decimal(10_000),
        total_collateral_value: Decimal = Decimal(10_000),
        outcomes: Iterable[Outcome] = (),
    ) -> None:
        self.account_id = account_id
        self.clock = clock
        self._positions: dict[tuple[str, MarginMode], Position] = {}
        for item in positions:
            self.set_position(item)
        self.holdings = tuple(holdings)
        self.rules = dict(rules or {})
        self.marks = dict(marks or {})
        self.free_collateral = free_collateral
        self.total_collateral_value = total_collateral_value
        self._outcomes = list(outcomes)
        self._landing: list[tuple[int, str, Decimal]] = []
        # Per stream: events, errors to raise, and None for "the iterator ends".
        self._streams: dict[StreamName, asyncio.Queue[StreamEvent | BaseException | None]] = {}
        self.calls: list[MarginCall] = []
        self.reads: list[PositionRead] = []
        self.opened: dict[StreamName, int] = {"private": 0, "public": 0}
        self.liquidations: list[Liquidation] = []
        self.read_failure: Callable[[], ExchangeError] | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.closed = False

    def __repr__(self) -> str:
        return f"FakeExchange(account_id={self.account_id!r}, positions={len(self._positions)})"

    # -- the test's side ------------------------------------------------------------------

    def script(self, *outcomes: Outcome) -> None:
        """Queue outcomes for the next ``adjust_margin`` calls, in order."""
        self._outcomes.extend(outcomes)

    def set_position(self, position: Position) -> None:
        """Put (or replace) a position as the exchange holds it."""
        if position.account_id != self.account_id:
            raise ValueError(f"position of {position.account_id}, not of {self.account_id}")
        self._positions[(position.symbol, position.margin_mode)] = position

    def apply_at(self, at_ms: int, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        """At ``at_ms`` the exchange applies a change no call here made (a call of a previous
        run landing late, the owner moving margin by hand)."""
        self._landing.append((at_ms, symbol, amount if kind is ActionKind.ADD else -amount))

    def close(self, symbol: str, margin_mode: MarginMode = MarginMode.ISOLATED) -> None:
        """The position is gone (closed by its owner): reads find none."""
        self._positions.pop((symbol, margin_mode), None)

    def liquidate(self, symbol: str, price: Decimal,
                  margin_mode: MarginMode = MarginMode.ISOLATED) -> Liquidation:
        """The exchange liquidates the position at ``price``: reads find none and
        ``get_liquidations`` lists it (nothing is pushed: ``push`` a ``LiquidationsPushed``
        for that)."""
        position = self._positions.pop((symbol, margin_mode))
        liquidation = Liquidation(
            account_id=self.account_id, liquidation_id=len(self.liquidations) + 1,
            time_ms=self.clock.now_ms(), symbol=symbol, qty=position.qty,
            transfer_price=price, fee=Decimal(0), to_insurance_fund=Decimal(0))
        self.liquidations.append(liquidation)
        return liquidation

    def position(self, symbol: str, margin_mode: MarginMode = MarginMode.ISOLATED
                 ) -> Position | None:  # fmt: skip
        """The position as the exchange holds it now, without counting a read."""
        self._land_due()
        return self._positions.get((symbol, margin_mode))

    def push(self, stream: StreamName, event: StreamEvent) -> None:
        """Deliver an event on a stream (to whoever iterates it now or next)."""
        self._queue(stream).put_nowait(event)

    def fail(self, stream: StreamName, error: BaseException) -> None:
        """The stream's iterator raises ``error`` after the events pushed before it."""
        self._queue(stream).put_nowait(error)

    def end(self, stream: StreamName) -> None:
        """The stream's iterator ends after the events pushed before it."""
        self._queue(stream).put_nowait(None)

    # -- the Exchange port ----------------------------------------------------------------

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        if not (isinstance(amount, Decimal) and amount.is_finite() and amount > 0):
            raise ValueError(f"margin amount must be a positive finite Decimal, got {amount!r}")
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self._land_due()
        outcome = self._outcomes.pop(0) if self._outcomes else OK
        now = self.clock.now_ms()
        self.calls.append(MarginCall(symbol, kind, amount, now, outcome.name))
        delta = amount if kind is ActionKind.ADD else -amount
        if outcome.error is not None:
            if outcome.applies and outcome.after_ms > 0:
                self.apply_at(now + outcome.after_ms, symbol, kind, amount)
            elif outcome.applies:
                self._apply(symbol, delta)
            raise outcome.error()
        if not self._apply(symbol, delta):
            raise Rejected(-1006, f"no isolated position on {symbol}", 400)

    async def get_positions(self, *, urgent: bool = False) -> AccountSnapshot:
        now = self._read(None, urgent)
        return AccountSnapshot(
            account_id=self.account_id,
            free_collateral=self.free_collateral,
            total_collateral_value=self.total_collateral_value,
            positions=tuple(replace(p, received_ms=now) for p in self._positions.values()
                            if p.is_open),
            exchange_ms=now,
            received_ms=now,
        )

    async def get_position(
        self, symbol: str, margin_mode: MarginMode, *, urgent: bool = False
    ) -> Position | None:
        now = self._read(symbol, urgent)
        found = self._positions.get((symbol, margin_mode))
        return replace(found, received_ms=now) if found is not None and found.is_open else None

    async def get_holdings(self) -> tuple[Holding, ...]:
        return self.holdings

    async def get_liquidations(self, since_ms: int) -> tuple[Liquidation, ...]:
        if self.read_failure is not None:
            raise self.read_failure()
        return tuple(item for item in reversed(self.liquidations) if item.time_ms >= since_ms)

    async def get_symbol_rules(self) -> dict[str, SymbolRules]:
        return dict(self.rules)

    async def get_mark_prices(self) -> dict[str, MarkPrice]:
        return dict(self.marks)

    def private_events(self) -> AsyncGenerator[StreamEvent, None]:
        return self._events("private")

    def public_events(self) -> AsyncGenerator[StreamEvent, None]:
        return self._events("public")

    async def aclose(self) -> None:
        self.closed = True

    # -- inside ---------------------------------------------------------------------------

    def _read(self, symbol: str | None, urgent: bool) -> int:
        now = self.clock.now_ms()
        self.reads.append(PositionRead(symbol, now, urgent))
        if self.read_failure is not None:
            raise self.read_failure()
        self._land_due()
        return now

    def _land_due(self) -> None:
        """Apply the late changes whose time has come."""
        now = self.clock.now_ms()
        for due in [entry for entry in self._landing if entry[0] <= now]:
            self._landing.remove(due)
            self._apply(due[1], due[2])

    def _apply(self, symbol: str, delta: Decimal) -> bool:
        """Move ``delta`` into the symbol's open isolated position; False if there is none."""
        key = (symbol, MarginMode.ISOLATED)
        found = self._positions.get(key)
        if found is None or not found.is_open:
            return False
        self._positions[key] = replace(
            found, margin=found.margin + delta, exchange_ms=self.clock.now_ms(),
            seq=None if found.seq is None else found.seq + 1)
        self.free_collateral -= delta
        return True

    def _queue(self, stream: StreamName) -> asyncio.Queue[StreamEvent | BaseException | None]:
        return self._streams.setdefault(stream, asyncio.Queue())

    async def _events(self, stream: StreamName) -> AsyncGenerator[StreamEvent, None]:
        self.opened[stream] += 1
        queue = self._queue(stream)
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


if TYPE_CHECKING:  # mypy proves the fake implements the whole port
    _PORT: Exchange = FakeExchange("")
