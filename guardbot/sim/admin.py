"""A client for the simulator's admin API (``/sim/...``), for tests, demos and benchmarks.

account = await open_account(sim.rest_url, usdc="10000",
                             positions=[("PERP_ETH_USDC", "ISOLATED", "1", 10)])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from guardbot.sim.keys import generate_key


@dataclass(frozen=True, slots=True)
class SimAccount:
    """A funded simulator account and its key. The secret never appears in ``repr``."""

    account_id: str
    orderly_key: str
    orderly_secret: str = field(repr=False)


class AdminError(RuntimeError):
    """The simulator refused an admin request (the message is its answer)."""


async def admin_call(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.request(method, path, json=body)
    data: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise AdminError(f"{method} {path}: HTTP {response.status_code}: {data.get('message')}")
    return data


async def open_account(
    rest_url: str,
    usdc: str = "10000",
    positions: Iterable[tuple[str, str, str, int]] = (),
    scopes: str = "read,trading",
    client: httpx.AsyncClient | None = None,
) -> SimAccount:
    """Create an account with a fresh key, fund it, and open ``positions`` given as
    ``(symbol, margin_mode, signed qty, leverage)`` at the current mark."""
    own = client is None
    client = client or httpx.AsyncClient(base_url=rest_url, timeout=10)
    try:
        orderly_key, secret = generate_key()
        created = await admin_call(
            client,
            "POST",
            "/sim/accounts",
            {"orderly_key": orderly_key, "scopes": scopes, "usdc": usdc},
        )
        account_id = str(created["account_id"])
        for symbol, mode, qty, leverage in positions:
            await admin_call(
                client,
                "POST",
                "/sim/positions",
                {
                    "account_id": account_id,
                    "symbol": symbol,
                    "margin_mode": mode,
                    "qty": qty,
                    "leverage": leverage,
                },
            )
        return SimAccount(account_id, orderly_key, secret)
    finally:
        if own:
            await client.aclose()
