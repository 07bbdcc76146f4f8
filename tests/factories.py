"""Domain values for tests, built in one place.

The default position is an isolated alt long with flat rates (``ALT_RULES``: base_imr 0.10,
base_mmr 0.05), so liquidation prices are hand-computable: a long of 10 at mark 100 with
cost 1000 and margin M liquidates at (1000 - M) / 9.5; ``SHORT`` (-10, cost -1000) at
(1000 + M) / 10.5.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D
from typing import Any

from guardbot.domain import MarginMode, Position, Source, SymbolRules

ACCOUNT = "0x" + "ab" * 32
ALT_RULES = SymbolRules("PERP_ALT_USDC", base_imr=D("0.1"), base_mmr=D("0.05"), imr_factor=D(0))

LONG = Position(
    account_id=ACCOUNT,
    symbol="PERP_ALT_USDC",
    margin_mode=MarginMode.ISOLATED,
    qty=D(10),
    average_open_price=D(100),
    cost_position=D(1000),
    mark_price=D(100),
    margin=D(200),
    leverage=10,
    unsettled_pnl=D(0),
    est_liq_price=None,
    mmr=D("0.05"),
    imr=D("0.1"),
    last_sum_unitary_funding=D(0),
    seq=1,
    exchange_ms=1_000,
    received_ms=1_000,
    source=Source.REST,
)
SHORT = replace(LONG, qty=D(-10), cost_position=D(-1000))


def position(**changes: Any) -> Position:
    """``LONG`` with fields replaced."""
    return replace(LONG, **changes)
