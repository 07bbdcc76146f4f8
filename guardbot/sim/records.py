"""What the simulated exchange stores: keys, accounts, their positions, orders and
liquidations. Plain mutable records; the rules that change them live in the engine."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from guardbot.sim.margin import ZERO

DEFAULT_LEVERAGE = 10

SymbolMode = tuple[str, str]  # (symbol, margin_mode): one position slot of an account


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An Orderly key registered to one account."""

    orderly_key: str
    account_id: str
    scopes: frozenset[str]
    expires_ms: int | None = None


@dataclass(slots=True)
class PositionState:
    symbol: str
    margin_mode: str
    leverage: int
    qty: Decimal = ZERO
    cost_position: Decimal = ZERO
    average_open_price: Decimal = ZERO
    margin: Decimal = ZERO
    fee_24h: Decimal = ZERO
    pnl_24h: Decimal = ZERO
    seq: int = 0
    updated_ms: int = 0


@dataclass(slots=True)
class Order:
    order_id: int
    account_id: str
    symbol: str
    side: str  # BUY | SELL
    order_type: str  # LIMIT | MARKET
    quantity: Decimal
    price: Decimal | None
    margin_mode: str
    reduce_only: bool
    client_order_id: str | None
    created_ms: int
    status: str = "NEW"  # NEW | FILLED | CANCELLED
    executed: Decimal = ZERO
    average_executed_price: Decimal = ZERO
    frozen: Decimal = ZERO  # isolated margin held for a resting isolated order
    updated_ms: int = 0

    @property
    def signed_quantity(self) -> Decimal:
        return self.quantity if self.side == "BUY" else -self.quantity


@dataclass(slots=True)
class Account:
    account_id: str
    holding: Decimal
    positions: dict[SymbolMode, PositionState] = field(default_factory=dict)
    leverages: dict[SymbolMode, int] = field(default_factory=dict)
    default_modes: dict[str, str] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    updated_ms: int = 0

    def open_positions(self) -> Iterator[PositionState]:
        return (p for p in self.positions.values() if p.qty != 0)

    def resting_orders(self) -> Iterator[Order]:
        return (o for o in self.orders.values() if o.status == "NEW")

    def leverage(self, symbol: str, margin_mode: str) -> int:
        """The symbol's leverage setting for that mode (10 until one is set)."""
        return self.leverages.get((symbol, margin_mode), DEFAULT_LEVERAGE)

    def busy(self, symbol: str, margin_mode: str) -> bool:
        """An open position or a resting order in that slot."""
        position = self.positions.get((symbol, margin_mode))
        return (position is not None and position.qty != 0) or any(
            o.symbol == symbol and o.margin_mode == margin_mode for o in self.resting_orders()
        )

    def position_or_empty(self, symbol: str, margin_mode: str) -> PositionState:
        """The position in that slot, or a fresh empty one at the current leverage setting
        (not stored)."""
        return self.positions.get((symbol, margin_mode)) or PositionState(
            symbol, margin_mode, self.leverage(symbol, margin_mode)
        )


@dataclass(frozen=True, slots=True)
class Liquidation:
    """One liquidated position. ``margin_lost``: collateral the account lost (an isolated
    position's margin; for cross, the account's loss split over its positions by notional).
    ``to_insurance_fund``: what the fund received (negative: what it paid out).
    ``liquidation_id``: one per liquidation, shared by the cross positions closed together."""

    liquidation_id: int
    account_id: str
    symbol: str
    margin_mode: str
    qty: Decimal
    price: Decimal
    margin_lost: Decimal
    to_insurance_fund: Decimal
    time_ms: int
