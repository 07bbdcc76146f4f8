"""Frozen domain values shared by every layer.

Wire JSON is parsed into these inside ``guardbot.exchange`` (parse at the edge); nothing past
the adapter sees a raw dict. Money, prices and quantities are ``Decimal``; ``seq`` is ``int``
(Orderly's ``seq`` exceeds 2**53, docs/exchange.md §4). Times are integer milliseconds since the
epoch (``*_ms``), the exchange's own unit, so virtual and real clocks compare the same way.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)


class MarginMode(enum.StrEnum):
    CROSS = "CROSS"
    ISOLATED = "ISOLATED"


class Source(enum.StrEnum):
    """Where a snapshot came from; every action records it (docs/architecture.md, "Invariants")."""

    REST = "REST"
    WS = "WS"
    MARK = "MARK"  # re-priced from a public mark-price push between position updates


class ActionKind(enum.StrEnum):
    """The two sides of ``POST /v1/position_margin`` (docs/exchange.md §4)."""

    ADD = "ADD"
    REDUCE = "REDUCE"


PositionKey = tuple[str, str, MarginMode]
"""(account_id, symbol, margin_mode): the identity of a position (docs/exchange.md §4)."""


@dataclass(frozen=True, slots=True)
class SymbolRules:
    """Per-symbol margin parameters from ``GET /v1/public/info`` (docs/exchange.md §4, §7)."""

    symbol: str
    base_imr: Decimal
    base_mmr: Decimal
    imr_factor: Decimal
    base_tick: Decimal = Decimal("0.0001")
    quote_tick: Decimal = Decimal("0.01")
    min_notional: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Position:
    """One net position of one account, as the exchange reported it.

    ``qty`` is signed (negative = short); ``cost_position`` is signed (positive for longs);
    ``margin`` is the isolated margin allocated (0 for cross). ``exchange_ms`` is the
    exchange's ``updated_time``/``timestamp``; ``received_ms`` is when guardbot asked for
    it (REST) or got it (a push): the data is at least that fresh.
    """

    account_id: str
    symbol: str
    margin_mode: MarginMode
    qty: Decimal
    average_open_price: Decimal
    cost_position: Decimal
    mark_price: Decimal
    margin: Decimal
    leverage: int
    unsettled_pnl: Decimal
    est_liq_price: Decimal | None
    mmr: Decimal
    imr: Decimal
    last_sum_unitary_funding: Decimal
    seq: int | None
    exchange_ms: int
    received_ms: int
    source: Source

    @property
    def key(self) -> PositionKey:
        return (self.account_id, self.symbol, self.margin_mode)

    @property
    def is_open(self) -> bool:
        return self.qty != 0


@dataclass(frozen=True, slots=True)
class Holding:
    """One token balance from ``GET /v1/client/holding`` (docs/exchange.md §4)."""

    token: str
    holding: Decimal
    frozen: Decimal
    pending_short: Decimal
    isolated_margin: Decimal
    isolated_order_frozen: Decimal
    updated_ms: int


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """``GET /v1/positions``: the account-level figures plus every position."""

    account_id: str
    free_collateral: Decimal
    total_collateral_value: Decimal
    positions: tuple[Position, ...]
    exchange_ms: int
    received_ms: int


@dataclass(frozen=True, slots=True)
class Liquidation:
    """One position the exchange liquidated (``GET /v1/liquidations`` row or a
    ``liquidationsaccount`` push, docs/exchange.md "Liquidation data"): the liquidation's id
    and time, and the position as it was taken over. The exchange does not say whether it
    was the isolated or the cross position on ``symbol``."""

    account_id: str
    liquidation_id: int
    time_ms: int
    symbol: str
    qty: Decimal
    transfer_price: Decimal
    fee: Decimal | None  # liquidator plus insurance fund fee, in USDC, when given
    to_insurance_fund: Decimal | None  # of the whole liquidation, when given


@dataclass(frozen=True, slots=True)
class MarkPrice:
    symbol: str
    price: Decimal
    exchange_ms: int


@dataclass(frozen=True, slots=True)
class Intent:
    """What a policy wants done to one isolated position. Policies return these; the arbiter
    turns at most one per position into an action."""

    account_id: str
    symbol: str
    kind: ActionKind
    amount: Decimal
    policy: str
    reason: str
    # Lower is more urgent: the executor serves the most endangered position first.
    urgency: Decimal = ZERO
    # An ADD answering danger (the position is below the policy's trigger): no cooldown
    # holds it back, and it may go out while earlier calls are unsettled (arbiter rule 3).
    rescue: bool = False
    details: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    # Set by the policy runner on a REDUCE (policies leave them alone): the highest distance
    # the ADD policies on this position restore, and the distance the REDUCE would leave
    # (None: no liquidation price). The arbiter refuses a REDUCE that lands below the floor.
    add_floor: Decimal | None = None
    distance_after: Decimal | None = None

    @property
    def key(self) -> PositionKey:
        return (self.account_id, self.symbol, MarginMode.ISOLATED)
