"""A simulated exchange per test, and an ``OrderlyExchange`` for a funded account on it.

The simulator runs with ``speed=0``: marks move only when a test moves them, so every figure
the client reads can be compared exactly with the simulator's own state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from pydantic import SecretStr

from guardbot.exchange.client import OrderlyExchange
from guardbot.exchange.ws import StreamTiming
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

FAST_STREAMS = StreamTiming(
    ping_interval_s=0.2, silence_s=1.0, open_timeout_s=2.0, backoff_base_s=0.01,
    backoff_cap_s=0.05,
)


@dataclass(frozen=True)
class Funded:
    account_id: str
    orderly_key: str
    orderly_secret: SecretStr


def urls(sim: SimServer) -> dict[str, str]:
    return {
        "rest_url": sim.rest_url,
        "public_ws_url": sim.public_ws_url,
        "private_ws_url": sim.private_ws_url,
    }


def fund(sim: SimServer, usdc: str = "10000", scopes: str = "read,trading") -> Funded:
    """A new account with ``usdc``, an isolated 1 ETH long at 10x and a cross 0.5 ETH long."""
    key, secret = generate_key()
    account_id = sim.engine.create_account(key, scopes, Decimal(usdc))
    sim.engine.open_position(account_id, "PERP_ETH_USDC", "ISOLATED", Decimal(1), 10)
    sim.engine.open_position(account_id, "PERP_ETH_USDC", "CROSS", Decimal("0.5"), 10)
    sim.flush()
    return Funded(account_id, key, SecretStr(secret))


def connect(sim: SimServer, funded: Funded, **kwargs: Any) -> OrderlyExchange:
    kwargs.setdefault("stream_timing", FAST_STREAMS)
    return OrderlyExchange(
        funded.account_id, funded.orderly_key, funded.orderly_secret, urls(sim), **kwargs
    )


@pytest.fixture
async def venue() -> AsyncIterator[SimServer]:
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        yield sim


@pytest.fixture
def funded(venue: SimServer) -> Funded:
    return fund(venue)


@pytest.fixture
async def exchange(venue: SimServer, funded: Funded) -> AsyncIterator[OrderlyExchange]:
    async with connect(venue, funded) as client:
        yield client
