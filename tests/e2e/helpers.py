"""End-to-end helpers: the real daemon (``run_daemon``) against the simulated exchange over
loopback, with a real audit database (SQLite; PostgreSQL where a test asks for it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from guardbot.audit.database import create_audit_engine
from guardbot.audit.tables import Action, ActionEvent, Observation
from guardbot.config import Settings, parse_config
from guardbot.daemon import run_daemon
from guardbot.sim.admin import SimAccount
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


def guard_settings(
    sim: SimServer, account: SimAccount, audit_url: str, spool: Path, **sections: Any
) -> Settings:
    """Settings for one guarded sim account; ``sections`` override whole config sections."""
    data: dict[str, Any] = {
        "exchange": {"preset": "sim", "rest_url": sim.rest_url,
                     "public_ws_url": sim.public_ws_url, "private_ws_url": sim.private_ws_url},
        "audit": {"url": audit_url, "spool_dir": str(spool)},
        "poll": {"interval_s": 1.0, "fast_interval_s": 0.5, "max_data_age_s": 5.0},
        "budgets": {"cooldown_s": 0.2},
        "health": {"enabled": False},
        "accounts": [{"name": "guarded", "account_id": account.account_id,
                      "orderly_key": account.orderly_key,
                      "orderly_secret": account.orderly_secret}],
    }  # fmt: skip
    data.update(sections)
    return parse_config(data)


@asynccontextmanager
async def guarding(settings: Settings, **kwargs: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run the daemon while the block runs; stop it (as SIGTERM would) afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_daemon(settings, stop=stop, **kwargs))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait (polling; the daemon runs in the same loop) until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {check}")
        await asyncio.sleep(0.02)


async def pin_mark(sim: SimServer, symbol: str, price: str) -> None:
    """Move a mark through the simulator's admin API (the exchange pushes it at once)."""
    async with httpx.AsyncClient(base_url=sim.rest_url) as client:
        response = await client.post("/sim/marks", json={"symbol": symbol, "price": price})
        response.raise_for_status()


class AuditReader:
    """Reads what the daemon wrote (the audit log is the record under test)."""

    def __init__(self, url: str) -> None:
        self.engine = create_audit_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def actions(self) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(Action).order_by(Action.time)))

    def events(self, kind: str | None = None) -> list[Any]:
        query = select(ActionEvent, Action.kind.label("action_kind"), Action.amount,
                       Action.margin_mode, Action.symbol).join(
            Action, Action.id == ActionEvent.action_id).order_by(ActionEvent.seq)
        if kind is not None:
            query = query.where(ActionEvent.kind == kind)
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def observations(self, kind: str) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(select(Observation).where(Observation.kind == kind)))

    def applied(self, action_kind: str) -> Decimal:
        """Margin moved by applied actions of one kind (SUCCEEDED, or RECONCILED applied)."""
        total = Decimal(0)
        for event in self.events():
            done = event.kind == "SUCCEEDED" or (
                event.kind == "RECONCILED" and (event.detail or {}).get("applied") == "true")
            if done and event.action_kind == action_kind:
                total += event.amount
        return total
