"""The shipped strategies, loaded the way the daemon loads them (``file:<name>``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from guardbot.config import PolicySettings
from guardbot.domain import MarginMode, Position, Source, SymbolRules
from guardbot.policies.base import PositionView
from guardbot.policies.loader import load_policies

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
RULES = SymbolRules("PERP_ALT_USDC", base_imr=D("0.1"), base_mmr=D("0.05"), imr_factor=D(0))
# Long 10 at mark 100, cost 1000: liquidation at (1000 - margin) / 9.5.
LONG = Position(
    account_id="0x" + "ab" * 32,
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


def _strategy(use: str, **params: Any) -> Any:
    [loaded] = load_policies([PolicySettings(use=use, params=params)], STRATEGIES)
    return loaded.policy


def _view(**changes: Any) -> PositionView:
    return PositionView.of(replace(LONG, **changes), RULES)


@pytest.fixture
def strategy() -> Callable[..., Any]:
    """Load a shipped strategy with params, as the daemon does (``file:<name>``)."""
    return _strategy


@pytest.fixture
def view() -> Callable[..., PositionView]:
    """A view of the long with fields replaced."""
    return _view
