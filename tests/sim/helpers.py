"""Helpers of the simulator's tests: an engine on a fixed clock, funded accounts, and signed
headers for hand-made requests."""

from __future__ import annotations

import time
from decimal import Decimal

from guardbot.sim.admin import SimAccount
from guardbot.sim.engine import Engine
from guardbot.sim.keys import generate_key, signed_headers

D = Decimal
ETH = "PERP_ETH_USDC"
BTC = "PERP_BTC_USDC"
NOW_MS = 1_700_000_000_000


def new_engine() -> Engine:
    return Engine(clock=lambda: NOW_MS)


def new_account(engine: Engine, usdc: str = "10000") -> str:
    return engine.create_account(generate_key()[0], usdc_amount=D(usdc))


def headers_for(
    account: SimAccount, method: str, path: str, body: str = "", timestamp_ms: int | None = None
) -> dict[str, str]:
    """The ``orderly-*`` headers of one request by ``account``, signed now unless
    ``timestamp_ms`` is given."""
    return signed_headers(
        account.orderly_secret,
        account.orderly_key,
        account.account_id,
        int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        method,
        path,
        body,
    )
