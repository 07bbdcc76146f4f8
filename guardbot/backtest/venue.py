"""The simulated exchange in process, seen through the wire: an ``Exchange`` per account over
the simulator's ``Engine``, for the backtest (docs/architecture.md, "Time").

No sockets and no sleeping, yet the same edge as against ``guardbot sim``: every answer is
the simulator's own JSON (``guardbot.sim.payloads``, enveloped as its REST layer does),
classified by the bot's REST rules (``guardbot.exchange.rest.interpret``) and parsed by the
bot's parsers (``guardbot.exchange.wire``; pushes through ``Stream.interpret``), so parse at
the edge holds and every conversion the daemon relies on is exercised. The exception is the
polls (``GET /v1/positions`` and ``/v1/position/{symbol}``), by far the most frequent
calls: they are answered with the domain values that parsing their JSON gives, built from
the engine's reports directly (``guardbot.backtest.answers``, proven equal in the tests;
``VenueParams.wire`` answers them through the JSON too). Errors still go through the
envelope and ``interpret``.

What the venue models (``VenueParams``):

- ``feed_delay_ms``: a push (a new mark, a position, a balance) reaches the guard this long
  after the exchange changed; pushes keep their order;
- ``round_trip_ms``: ``POST /v1/position_margin`` reaches the engine after half of it and
  answers after all of it; reads answer at once;
- ``lost``: the fraction of ``position_margin`` answers lost: the engine applies (or
  refuses) the change, and the call raises ``Uncertain`` when the answer was due, as when
  the simulator drops the connection (``guardbot.sim.faults``); seeded by ``seed``;
- the exchange's rate limits, through the bot's own ``RateLimiter`` on the virtual clock.

Pushes: the public stream carries every symbol's mark whenever the marks move; the private
stream a position whenever its quantity or margin changes (a margin call, a liquidation) and
the balance with it. Re-pricing reaches the guard through the marks, as the book expects;
the REST poller keeps the data fresh.

``applied`` is the exchange's own ledger: every change the engine applied, answered or not.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from guardbot.backtest import answers
from guardbot.clock import ManualClock
from guardbot.domain import (
    AccountSnapshot,
    ActionKind,
    Holding,
    Liquidation,
    MarginMode,
    MarkPrice,
    Position,
    Source,
    SymbolRules,
)
from guardbot.exchange import wire
from guardbot.exchange.client import NOT_FOUND_CODES, parse_public, private_parser
from guardbot.exchange.errors import Rejected, Uncertain
from guardbot.exchange.limits import Priority, RateLimiter
from guardbot.exchange.port import (
    HoldingsPushed,
    LiquidationsPushed,
    MarksPushed,
    PositionsPushed,
    StreamEvent,
    StreamGap,
)
from guardbot.exchange.rest import Failure, interpret
from guardbot.exchange.ws import Parse, Stream
from guardbot.sim import payloads
from guardbot.sim.engine import Engine
from guardbot.sim.params import EngineError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class VenueParams:
    feed_delay_ms: int = 100
    round_trip_ms: int = 100
    lost: float = 0.0
    seed: int = 7
    # Answer the polls through the simulator's JSON and the bot's parser, as over HTTP,
    # instead of as domain values built from the engine (``guardbot.backtest.answers``):
    # the same values, several times slower.
    wire: bool = False

    def __post_init__(self) -> None:
        if self.feed_delay_ms < 0 or self.round_trip_ms < 0:
            raise ValueError("delays must not be negative")
        if not 0 <= self.lost <= 1:
            raise ValueError(f"lost must be a fraction from 0 to 1, got {self.lost:g}")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulator's REST layer would send back: an HTTP status and a JSON body."""

    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return self.status == 200

    def read(self, method: str, what: str) -> wire.Envelope:
        """The bot's reading: ``interpret`` classifies it exactly as an HTTP answer."""
        outcome = interpret(method, what, self.status, self.body, None)
        if isinstance(outcome, Failure):
            raise outcome.error
        return outcome


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """One margin change the engine applied (the exchange's ledger)."""

    time_ms: int
    account_id: str
    symbol: str
    kind: ActionKind
    amount: Decimal
    answered: bool


class _Feed:
    """One stream's pushes in flight: JSON text due at a time, in order."""

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self._queue: deque[tuple[int, str]] = deque()
        self._wake = asyncio.Event()

    def publish(self, due_ms: int, text: str) -> None:
        self._queue.append((due_ms, text))
        self._wake.set()

    async def texts(self) -> AsyncGenerator[str, None]:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            due, text = self._queue[0]
            wait_ms = due - self._clock.now_ms()
            if wait_ms > 0:
                await self._clock.sleep(wait_ms / 1000)
                continue
            self._queue.popleft()
            yield text


class Venue:
    """The engine and everything it says, for the accounts the guard watches."""

    def __init__(self, engine: Engine, clock: ManualClock, params: VenueParams,
                 listening: frozenset[str]) -> None:  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.params = params
        self.limiter = RateLimiter(clock=clock)
        self.applied: list[AppliedChange] = []
        self.counts: Counter[str] = Counter()
        self._dice = random.Random(params.seed)
        self._private = {account_id: _Feed(clock) for account_id in listening}
        self._public = _Feed(clock)
        self._seen_liquidations = len(engine.liquidations)
        self.started_ms = clock.now_ms()

    def exchange(self, account_id: str) -> VenueExchange:
        return VenueExchange(self, account_id)

    # -- the exchange side ------------------------------------------------------------------

    def move_marks(self, marks: Mapping[str, Decimal]) -> None:
        """New marks: the engine re-prices and liquidates; the marks and any position that
        changed go out on the streams."""
        self.engine.advance(marks)
        now = self.clock.now_ms()
        data = [{"symbol": s, "price": payloads.num(p)} for s, p in self.engine.marks.items()]
        self._public.publish(now + self.params.feed_delay_ms,
                             payloads.dumps({"topic": "markprices", "ts": now, "data": data}))
        liquidations = self.engine.liquidations
        if len(liquidations) > self._seen_liquidations:
            fresh = liquidations[self._seen_liquidations:]
            for event in fresh:
                self._push_position(event.account_id, event.symbol, event.margin_mode)
            for account_id in {event.account_id for event in fresh}:
                feed = self._private.get(account_id)
                if feed is not None:
                    data = payloads.liquidations_push(
                        e for e in fresh if e.account_id == account_id)
                    feed.publish(now + self.params.feed_delay_ms, payloads.dumps(
                        {"topic": "liquidationsaccount", "ts": now, "data": data}))
            self._seen_liquidations = len(liquidations)
        self.engine.drain_changes()  # re-pricing: the marks carry it

    def _push_position(self, account_id: str, symbol: str, margin_mode: str) -> None:
        feed = self._private.get(account_id)
        if feed is None:
            return
        now = self.clock.now_ms()
        account = self.engine.account(account_id)
        row = payloads.position_push(self.engine.position_view(account, symbol, margin_mode),
                                     now)
        due = now + self.params.feed_delay_ms
        feed.publish(due, payloads.dumps(
            {"topic": "position", "ts": now, "data": {"positions": [row]}}))
        balance = payloads.balance_push(self.engine.holding_view(account), now)
        feed.publish(due, payloads.dumps({"topic": "balance", "ts": now, "data": balance}))

    def answer(self, request: str, call: Callable[[], Any]) -> Answer:
        """Run ``call`` on the engine and wrap its outcome as the simulator's REST layer
        does: the success envelope, or the error envelope of an ``EngineError``."""
        self.counts[request] += 1
        try:
            data = call()
        except EngineError as exc:
            body = payloads.dumps(payloads.error(exc.code, exc.message))
            return Answer(exc.http_status, body.encode())
        return Answer(200, payloads.dumps(payloads.ok(data, self.clock.now_ms())).encode())

    def typed(self, request: str, call: Callable[[], T]) -> T:
        """Run ``call`` on the engine for an answer built as domain values
        (``guardbot.backtest.answers``), counted as ``answer`` counts; an ``EngineError``
        becomes the error envelope the bot reads, exactly as on the wire."""
        self.counts[request] += 1
        try:
            return call()
        except EngineError as exc:
            body = payloads.dumps(payloads.error(exc.code, exc.message))
            Answer(exc.http_status, body.encode()).read("GET", request)
            raise AssertionError("an error envelope always raises") from None

    def adjust(self, account_id: str, symbol: str, kind: ActionKind, amount: Decimal
               ) -> tuple[Answer, bool]:  # fmt: skip
        """``POST /v1/position_margin`` as the engine answers it, and whether that answer
        is lost. An applied change goes into ``applied`` and out on the private stream."""
        lost = self.params.lost > 0 and self._dice.random() < self.params.lost

        def call() -> None:
            self.engine.adjust_margin(account_id, symbol, kind.value, format(amount, "f"))

        answer = self.answer("POST /v1/position_margin", call)
        if lost:
            self.counts["lost answers"] += 1
        if answer.ok:
            self.applied.append(AppliedChange(self.clock.now_ms(), account_id, symbol, kind,
                                              amount, answered=not lost))
            self._push_position(account_id, symbol, "ISOLATED")
            self.engine.drain_changes()
        return answer, lost

    def private_texts(self, account_id: str) -> AsyncGenerator[str, None]:
        return self._private[account_id].texts()

    def public_texts(self) -> AsyncGenerator[str, None]:
        return self._public.texts()


class VenueExchange:
    """The ``Exchange`` port (guardbot/exchange/port.py) for one account on the venue."""

    def __init__(self, venue: Venue, account_id: str) -> None:
        self.venue = venue
        self.account_id = account_id
        self._key = f"backtest:{account_id}"  # the rate limiter's per-key scope
        self._clock = venue.clock

    def __repr__(self) -> str:
        return f"VenueExchange(account_id={self.account_id!r})"

    async def _limit(self, endpoint: str, urgent: bool) -> None:
        await self.venue.limiter.acquire(endpoint, self._key,
                                         Priority.URGENT if urgent else Priority.ROUTINE)

    async def get_positions(self, *, urgent: bool = False) -> AccountSnapshot:
        endpoint = "GET /v1/positions"
        await self._limit(endpoint, urgent)
        engine = self.venue.engine
        asked_ms = self._clock.now_ms()
        if not self.venue.params.wire:
            def typed() -> AccountSnapshot:
                account = engine.account(self.account_id)
                return answers.account_snapshot(
                    engine.account_view(account), engine.positions(account),
                    account_id=self.account_id, asked_ms=asked_ms,
                    answered_ms=self._clock.now_ms())

            return self.venue.typed(endpoint, typed)

        def call() -> dict[str, Any]:
            account = engine.account(self.account_id)
            data = payloads.account_figures(engine.account_view(account))
            data["rows"] = [payloads.position(row, asked_ms) for row in engine.positions(account)]
            return data

        envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        return wire.account_snapshot(envelope.data, account_id=self.account_id,
                                     timestamp_ms=envelope.timestamp_ms, received_ms=asked_ms)

    async def get_position(
        self, symbol: str, margin_mode: MarginMode, *, urgent: bool = False
    ) -> Position | None:
        endpoint = "GET /v1/position/{symbol}"
        await self._limit(endpoint, urgent)
        engine = self.venue.engine
        asked_ms = self._clock.now_ms()
        if not self.venue.params.wire:
            def typed() -> Position:
                account = engine.account(self.account_id)
                market = engine.market(symbol)
                return answers.position(
                    engine.position_view(account, market.symbol, margin_mode.value),
                    account_id=self.account_id, asked_ms=asked_ms)

            try:
                found = self.venue.typed(endpoint, typed)
            except Rejected as exc:
                if exc.code in NOT_FOUND_CODES:
                    return None
                raise
            return found if found.is_open else None

        def call() -> dict[str, Any]:
            account = engine.account(self.account_id)
            market = engine.market(symbol)
            return payloads.position(
                engine.position_view(account, market.symbol, margin_mode.value), asked_ms)

        try:
            envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        except Rejected as exc:
            if exc.code in NOT_FOUND_CODES:
                return None
            raise
        if envelope.data is None:
            return None
        position = wire.position(envelope.data, account_id=self.account_id,
                                 received_ms=asked_ms, source=Source.REST)
        return position if position.is_open else None

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        if not (isinstance(amount, Decimal) and amount.is_finite() and amount > 0):
            raise ValueError(f"margin amount must be a positive finite Decimal, got {amount!r}")
        endpoint = "POST /v1/position_margin"
        await self._limit(endpoint, kind is ActionKind.ADD)
        half_s = self.venue.params.round_trip_ms / 2000
        await self._clock.sleep(half_s)
        answer, lost = self.venue.adjust(self.account_id, symbol, kind, amount)
        await self._clock.sleep(half_s)
        if lost:
            raise Uncertain(f"{endpoint} {kind.value} {amount} {symbol}: the answer was lost "
                            "(the exchange may have applied it)")
        answer.read("POST", endpoint)

    async def get_holdings(self) -> tuple[Holding, ...]:
        endpoint = "GET /v1/client/holding"
        engine = self.venue.engine

        def call() -> dict[str, Any]:
            holding = engine.holding_view(engine.account(self.account_id))
            return {"holding": [payloads.holding(holding)]}

        envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        return wire.holdings(envelope.data)

    async def get_liquidations(self, since_ms: int) -> tuple[Liquidation, ...]:
        endpoint = "GET /v1/liquidations"
        await self._limit(endpoint, False)
        engine = self.venue.engine

        def call() -> dict[str, Any]:
            found = payloads.liquidations(e for e in engine.liquidations
                                          if e.account_id == self.account_id
                                          and e.time_ms >= since_ms)
            return {"rows": sorted(found, key=lambda row: -row["liquidation_id"])}

        envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        return wire.liquidations(wire.rows(envelope.data, "liquidations"),
                                 account_id=self.account_id, where="liquidations.rows")

    async def get_symbol_rules(self) -> dict[str, SymbolRules]:
        endpoint = "GET /v1/public/info"
        engine = self.venue.engine

        def call() -> dict[str, Any]:
            started = self.venue.started_ms
            return {"rows": [payloads.market_info(m, started) for m in engine.markets.values()]}

        envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        return wire.symbol_rules(envelope.data)

    async def get_mark_prices(self) -> dict[str, MarkPrice]:
        endpoint = "GET /v1/public/futures"
        engine = self.venue.engine
        now = self._clock.now_ms()

        def call() -> dict[str, Any]:
            return {"rows": [payloads.futures(m, engine.marks[m.symbol], Decimal(0), now)
                             for m in engine.markets.values()]}  # fmt: skip

        envelope = self.venue.answer(endpoint, call).read("GET", endpoint)
        return wire.mark_prices(envelope.data, envelope.timestamp_ms or now)

    async def _events(self, name: str, texts: AsyncGenerator[str, None], parse: Parse
                      ) -> AsyncGenerator[StreamEvent, None]:  # fmt: skip
        # The bot's own reading of a raw push (no connection is ever opened).
        stream = Stream(name, "ws://backtest", (), parse, clock_ms=self._clock.now_ms)
        yield StreamGap(stream=name, reason="connected")  # as after every subscription
        async for text in texts:
            event = stream.interpret(text)
            if isinstance(event, _EVENTS):
                yield event

    def private_events(self) -> AsyncGenerator[StreamEvent, None]:
        return self._events("private", self.venue.private_texts(self.account_id),
                            private_parser(self.account_id, self._clock.now_ms))

    def public_events(self) -> AsyncGenerator[StreamEvent, None]:
        return self._events("public", self.venue.public_texts(), parse_public)

    async def aclose(self) -> None:
        return None


_EVENTS = (PositionsPushed, HoldingsPushed, MarksPushed, LiquidationsPushed, StreamGap)
