"""Helpers of the engine's tests: an engine on a fixed clock and funded accounts."""

from __future__ import annotations

from decimal import Decimal

from guardbot.sim.engine import Engine
from guardbot.sim.keys import generate_key

D = Decimal
ETH = "PERP_ETH_USDC"
BTC = "PERP_BTC_USDC"
NOW_MS = 1_700_000_000_000


def new_engine() -> Engine:
    return Engine(clock=lambda: NOW_MS)


def new_account(engine: Engine, usdc: str = "10000") -> str:
    return engine.create_account(generate_key()[0], usdc_amount=D(usdc))
