"""Fixtures of the simulator's tests (``sim`` and ``sim_account`` are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from guardbot.sim.admin import SimAccount
from guardbot.sim.client import SimClient
from guardbot.sim.engine import Engine
from guardbot.sim.server import SimServer

from .helpers import new_engine


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@pytest.fixture
def client(sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient) -> SimClient:
    """A signed client for ``sim_account``."""
    return SimClient(sim.rest_url, sim_account, http)


@pytest.fixture
def engine() -> Engine:
    return new_engine()
