"""The port the guard talks to (docs/architecture.md, "Conventions"): one ``Exchange`` per
guarded account.

``guardbot.exchange.client.OrderlyExchange`` implements it over HTTP and WebSocket; tests run
it against ``guardbot sim`` over real loopback sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

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


@dataclass(frozen=True, slots=True)
class PositionsPushed:
    """Private WS ``position`` push: incremental, merged by (symbol, margin_mode)."""

    positions: tuple[Position, ...]


@dataclass(frozen=True, slots=True)
class HoldingsPushed:
    """Private WS ``balance`` push."""

    holdings: tuple[Holding, ...]


@dataclass(frozen=True, slots=True)
class MarksPushed:
    """Public WS ``markprices`` push."""

    marks: tuple[MarkPrice, ...]


@dataclass(frozen=True, slots=True)
class LiquidationsPushed:
    """Private WS ``liquidationsaccount`` push: positions of the account the exchange
    liquidated."""

    liquidations: tuple[Liquidation, ...]


@dataclass(frozen=True, slots=True)
class StreamGap:
    """The stream was interrupted (reconnect, silence, resubscribe): pushes may have been
    missed, so the consumer must resynchronise over REST before trusting pushes again."""

    stream: str
    reason: str


StreamEvent = PositionsPushed | HoldingsPushed | MarksPushed | LiquidationsPushed | StreamGap


class Exchange(Protocol):
    """Everything the guard needs from one account on the exchange.

    Every method raises only ``guardbot.exchange.errors.ExchangeError`` subclasses.
    """

    account_id: str

    async def get_positions(self, *, urgent: bool = False) -> AccountSnapshot:
        """Every position of the account. ``received_ms`` of the snapshot and its positions
        is when it was asked for (the data is at least that fresh). ``urgent``: may use the
        share of the rate limit kept for positions at risk."""
        ...

    async def get_position(
        self, symbol: str, margin_mode: MarginMode, *, urgent: bool = False
    ) -> Position | None:
        """One position; ``None`` when there is none (qty 0 or "not found"). Stamped like
        ``get_positions``."""
        ...

    async def adjust_margin(self, symbol: str, kind: ActionKind, amount: Decimal) -> None:
        """``POST /v1/position_margin``. Raises ``Uncertain`` if the outcome is unknown."""
        ...

    async def get_holdings(self) -> tuple[Holding, ...]: ...

    async def get_liquidations(self, since_ms: int) -> tuple[Liquidation, ...]:
        """The account's liquidations at or after ``since_ms`` (exchange time), newest
        first."""
        ...

    async def get_symbol_rules(self) -> dict[str, SymbolRules]: ...

    async def get_mark_prices(self) -> dict[str, MarkPrice]: ...

    def private_events(self) -> AsyncIterator[StreamEvent]:
        """Private WS ``position``, ``balance`` and ``liquidationsaccount`` pushes, with
        ``StreamGap`` on reconnects;
        runs (reconnecting) until the consumer stops iterating."""
        ...

    def public_events(self) -> AsyncIterator[StreamEvent]:
        """Public WS ``markprices`` pushes, with ``StreamGap`` on reconnects."""
        ...

    async def aclose(self) -> None: ...
