"""Shared fixtures. The PostgreSQL server at 127.0.0.1:5432 is a real part of the suite."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from guardbot.audit import schema
from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.server import SimServer

PG_URL = os.environ.get(
    "GUARDBOT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """A fresh simulated exchange on a free loopback port (seed 7, scenario calm)."""
    async with SimServer(seed=7, scenario="calm", speed=1.0, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
async def sim_account(sim: SimServer) -> SimAccount:
    """An account funded with 10,000 USDC, long 1 ETH isolated (10x) and long 0.5 ETH cross
    (10x) on PERP_ETH_USDC, created through the admin HTTP API."""
    return await open_account(
        sim.rest_url,
        usdc="10000",
        positions=[("PERP_ETH_USDC", "ISOLATED", "1", 10), ("PERP_ETH_USDC", "CROSS", "0.5", 10)],
    )


@pytest.fixture
async def audit(tmp_path: Path) -> AsyncIterator[AuditLog]:
    """A migrated SQLite audit log in the test's folder, with a run started."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    log = await AuditLog.open(url, tmp_path / "spool")
    await log.start_run("test", "hash", "host")
    yield log
    await log.aclose()


@pytest.fixture
def guard_clock() -> ManualClock:
    """The one clock of a guard under test (``timed_audit`` runs on it too)."""
    return ManualClock(1_700_000_000_000)


@pytest.fixture
async def timed_audit(tmp_path: Path, guard_clock: ManualClock) -> AsyncIterator[AuditLog]:
    """``audit`` on ``guard_clock``, as the daemon opens the audit log on its one clock: the
    guard's records and the store's agree on time."""
    url = f"sqlite:///{tmp_path / 'timed.db'}"
    schema.upgrade(url)
    log = await AuditLog.open(url, tmp_path / "timed-spool", clock=guard_clock)
    await log.start_run("test", "hash", "host")
    yield log
    await log.aclose()
