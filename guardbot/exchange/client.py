"""``OrderlyExchange``: the ``Exchange`` port over Orderly's REST API and WebSockets.

Composition only: ``signing`` signs, ``rest`` sends and maps errors, ``limits`` throttles,
``wire`` parses, ``ws`` streams. Every method returns frozen domain values and raises only
``guardbot.exchange.errors`` (docs/exchange.md §4 for the endpoints).

Priorities (``limits``): ``adjust_margin(ADD)`` is urgent (a position at risk), REDUCE is a
routine sweep; reads are routine unless ``urgent=True`` (the executor's verification reads).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

from pydantic import SecretStr

from guardbot import metrics
from guardbot.config import AccountSettings, ExchangeSettings
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
from guardbot.exchange.errors import MalformedResponse, Rejected
from guardbot.exchange.limits import SHARED_LIMITER, Priority, RateLimiter
from guardbot.exchange.port import (
    HoldingsPushed,
    LiquidationsPushed,
    MarksPushed,
    PositionsPushed,
    StreamEvent,
)
from guardbot.exchange.rest import RestClient, Sleep
from guardbot.exchange.signing import Signer
from guardbot.exchange.ws import DEFAULT_TIMING, Parse, Stream, StreamTiming

log = logging.getLogger(__name__)

NOT_FOUND_CODES = frozenset({-1006})  # "resource not found" (docs/exchange.md §3)
LIQUIDATIONS_PAGE = 25  # rows asked for in one GET /v1/liquidations
T = TypeVar("T")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{name} must be a {'/'.join(schemes)} URL, got {url!r}")
    return url


def _parsed(endpoint: str, parse: Callable[[], T]) -> T:
    """Run a wire parser; a malformed answer is counted and logged, then raised."""
    try:
        return parse()
    except MalformedResponse as exc:
        metrics.MALFORMED.labels("rest").inc()
        metrics.EXCHANGE_ERRORS.labels(endpoint, "malformed").inc()
        log.warning("%s: malformed answer: %s", endpoint, exc)
        raise


def _priority(urgent: bool) -> Priority:
    return Priority.URGENT if urgent else Priority.ROUTINE


class OrderlyExchange:
    """One guarded account on Orderly. Use as an async context manager, or call ``aclose``.

    ``urls`` holds ``rest_url``, ``public_ws_url`` and ``private_ws_url``; the WS URLs may
    contain ``{account_id}``. Raises ``AuthError`` at once if the secret does not belong to
    ``orderly_key`` and ``ValueError`` for a URL that cannot work.
    """

    def __init__(
        self,
        account_id: str,
        orderly_key: str,
        orderly_secret: SecretStr,
        urls: dict[str, str],
        timeout_s: float = 10.0,
        clock_ms: Callable[[], int] = wall_clock_ms,
        *,
        margin_timeout_s: float | None = None,
        limiter: RateLimiter = SHARED_LIMITER,
        stream_timing: StreamTiming = DEFAULT_TIMING,
        max_attempts: int = 3,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.account_id = account_id
        self._signer = Signer(orderly_key, orderly_secret)
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()
        rest_url = _check_url("rest_url", urls["rest_url"], ("http", "https"))
        self._ws_urls = {
            name: _check_url(name, urls[name], ("ws", "wss")).replace("{account_id}", account_id)
            for name in ("public_ws_url", "private_ws_url")
        }
        self._stream_timing = stream_timing
        self._margin_timeout_s = margin_timeout_s
        self._rest = RestClient(
            rest_url.rstrip("/"),
            account_id,
            self._signer,
            timeout_s=timeout_s,
            clock_ms=clock_ms,
            limiter=limiter,
            max_attempts=max_attempts,
            sleep=sleep,
            rng=self._rng,
        )

    @classmethod
    def from_settings(
        cls, account: AccountSettings, exchange: ExchangeSettings, **kwargs: Any
    ) -> OrderlyExchange:
        """Build from config; resolving the secret may raise ``ConfigError``."""
        return cls(
            account.account_id,
            account.orderly_key,
            account.secret(),
            exchange.urls(),
            timeout_s=exchange.timeout_s,
            margin_timeout_s=exchange.margin_timeout_s,
            **kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"OrderlyExchange(account_id={self.account_id!r}, "
            f"orderly_key={self._signer.orderly_key!r}, rest_url={self._rest.base_url!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._rest.aclose()

    # -- positions and margin ----------------------------------------------------------------

    async def get_positions(self, *, urgent: bool = False) -> AccountSnapshot:
        """``GET /v1/positions``: account figures and every position (cross and isolated).
        Stamped with the time it was asked for: the data is at least that fresh, and no
        older (a response in flight when a margin call ended proves nothing about it)."""
        asked_ms = self._clock_ms()
        envelope = await self._rest.get(
            "GET /v1/positions", "/v1/positions", priority=_priority(urgent)
        )
        snapshot = _parsed("GET /v1/positions", lambda: wire.account_snapshot(
            envelope.data, account_id=self.account_id, timestamp_ms=envelope.timestamp_ms,
            received_ms=asked_ms,
        ))
        metrics.SNAPSHOTS.labels(metrics.account_label(self.account_id), Source.REST.value).inc()
        return snapshot

    async def get_position(
        self, symbol: str, margin_mode: MarginMode, *, urgent: bool = False
    ) -> Position | None:
        """``GET /v1/position/{symbol}?margin_mode=``; ``None`` when there is no position
        (quantity 0, or the exchange's "not found"). Stamped with the time it was asked for,
        as ``get_positions``."""
        asked_ms = self._clock_ms()
        try:
            envelope = await self._rest.get(
                "GET /v1/position/{symbol}",
                f"/v1/position/{symbol}",
                {"margin_mode": margin_mode.value},
                priority=_priority(urgent),
            )
        except Rejected as exc:
            if exc.code in NOT_FOUND_CODES:
                return None
            raise
        if envelope.data is None:
            return None
        position = _parsed("GET /v1/position/{symbol}", lambda: wire.position(
            envelope.data, account_id=self.account_id, received_ms=asked_ms,
            source=Source.REST,
        ))
        metrics.SNAPSHOTS.labels(metrics.account_label(self.account_id), Source.REST.value).inc()
        return position if position.is_open else None

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        """``POST /v1/position_margin`` once, never retried. ``Uncertain`` means the change
        may have happened: re-read the position before anything else. A caller that cancels
        this call while it is in flight is in the same position."""
        if not (isinstance(amount, Decimal) and amount.is_finite() and amount > 0):
            raise ValueError(f"margin amount must be a positive finite Decimal, got {amount!r}")
        await self._rest.post(
            "POST /v1/position_margin",
            "/v1/position_margin",
            {"symbol": symbol, "amount": format(amount, "f"), "type": kind.value},
            priority=Priority.URGENT if kind is ActionKind.ADD else Priority.ROUTINE,
            timeout_s=self._margin_timeout_s,
        )

    # -- account ------------------------------------------------------------------------------

    async def get_holdings(self) -> tuple[Holding, ...]:
        """``GET /v1/client/holding``: every token balance."""
        envelope = await self._rest.get("GET /v1/client/holding", "/v1/client/holding")
        return _parsed("GET /v1/client/holding", lambda: wire.holdings(envelope.data))

    async def get_liquidations(self, since_ms: int) -> tuple[Liquidation, ...]:
        """``GET /v1/liquidations?start_t=``: the account's liquidations since ``since_ms``
        (the first page, newest first: enough for the ones of the last minutes)."""
        envelope = await self._rest.get(
            "GET /v1/liquidations", "/v1/liquidations",
            {"start_t": str(since_ms), "page": "1", "size": str(LIQUIDATIONS_PAGE)},
        )
        return _parsed("GET /v1/liquidations", lambda: wire.liquidations(
            wire.rows(envelope.data, "liquidations"), account_id=self.account_id,
            where="liquidations.rows"))

    async def get_key_scopes(self) -> frozenset[str]:
        """``GET /v1/client/key_info``: the scopes of the key this client signs with
        (``read``, ``trading``, ``asset``)."""
        envelope = await self._rest.get("GET /v1/client/key_info", "/v1/client/key_info")
        return _parsed("GET /v1/client/key_info",
                       lambda: wire.key_scopes(envelope.data, self._signer.orderly_key))

    # -- public -------------------------------------------------------------------------------

    async def get_symbol_rules(self) -> dict[str, SymbolRules]:
        """``GET /v1/public/info``: margin parameters of every symbol."""
        envelope = await self._rest.get("GET /v1/public/info", "/v1/public/info", signed=False)
        return _parsed("GET /v1/public/info", lambda: wire.symbol_rules(envelope.data))

    async def get_mark_prices(self) -> dict[str, MarkPrice]:
        """``GET /v1/public/futures``: the mark price of every symbol."""
        envelope = await self._rest.get(
            "GET /v1/public/futures", "/v1/public/futures", signed=False
        )
        return _parsed("GET /v1/public/futures", lambda: wire.mark_prices(
            envelope.data, envelope.timestamp_ms or self._clock_ms()
        ))

    # -- streams ------------------------------------------------------------------------------

    def private_events(self) -> AsyncGenerator[StreamEvent, None]:
        """Private ``position``, ``balance`` and ``liquidationsaccount`` pushes, with
        ``StreamGap`` on (re)connects."""
        stream = Stream(
            "private",
            self._ws_urls["private_ws_url"],
            ("position", "balance", "liquidationsaccount"),
            private_parser(self.account_id, self._clock_ms),
            login=lambda: self._signer.ws_auth(self._clock_ms()),
            timing=self._stream_timing,
            clock_ms=self._clock_ms,
            rng=self._rng,
        )
        return stream.events()

    def public_events(self) -> AsyncGenerator[StreamEvent, None]:
        """Public ``markprices`` pushes, with ``StreamGap`` on (re)connects."""
        stream = Stream(
            "public",
            self._ws_urls["public_ws_url"],
            ("markprices",),
            parse_public,
            timing=self._stream_timing,
            clock_ms=self._clock_ms,
            rng=self._rng,
        )
        return stream.events()


def private_parser(account_id: str, clock_ms: Callable[[], int]) -> Parse:
    """The private stream's ``Parse``: ``position``, ``balance`` and ``liquidationsaccount``
    pushes (§6)."""

    def parse(topic: str, data: Any, ts_ms: int) -> StreamEvent | None:
        if topic == "position":
            positions = wire.pushed_positions(data, account_id=account_id, received_ms=clock_ms())
            metrics.SNAPSHOTS.labels(metrics.account_label(account_id), Source.WS.value).inc()
            return PositionsPushed(positions)
        if topic == "balance":
            return HoldingsPushed(wire.pushed_balances(data, ts_ms))
        if topic == "liquidationsaccount":
            return LiquidationsPushed(wire.liquidations(data, account_id=account_id,
                                                        where="liquidationsaccount.data"))
        return None

    return parse


def parse_public(topic: str, data: Any, ts_ms: int) -> StreamEvent | None:
    """The public stream's ``Parse``: ``markprices`` pushes (§6)."""
    return MarksPushed(wire.pushed_marks(data, ts_ms)) if topic == "markprices" else None
