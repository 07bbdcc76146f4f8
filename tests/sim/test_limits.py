"""Rate limits (§5): the pure limiter with a driven clock, and 429/-1003 over the wire."""

from __future__ import annotations

import asyncio

import httpx

from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.client import SimClient
from guardbot.sim.limits import LimitEnforcer
from guardbot.sim.server import SimServer


def test_sliding_window_per_key_and_endpoint() -> None:
    limiter = LimitEnforcer()
    margin = ("POST", "/v1/position_margin")
    assert all(limiter.allow(*margin, "key-a", "ip", 100.0 + i * 0.05) for i in range(10))
    assert not limiter.allow(*margin, "key-a", "ip", 100.6)
    assert limiter.allow(*margin, "key-b", "ip", 100.6)  # another key has its own budget
    assert limiter.allow("GET", "/v1/positions", "key-a", "ip", 100.6)  # another endpoint
    assert limiter.allow(*margin, "key-a", "ip", 101.0)  # the first request left the window
    assert not limiter.allow(*margin, "key-a", "ip", 101.01)


def test_per_ip_limit_ignores_the_key() -> None:
    limiter = LimitEnforcer()
    leverage = ("GET", "/v1/client/leverage")
    assert limiter.allow(*leverage, "key-a", "10.0.0.1", 5.0)
    assert not limiter.allow(*leverage, "key-b", "10.0.0.1", 5.5)
    assert limiter.allow(*leverage, "key-b", "10.0.0.2", 5.5)


def test_undocumented_endpoints_are_not_limited() -> None:
    limiter = LimitEnforcer()
    assert all(limiter.allow("GET", "/v1/client/leverages", "k", "ip", 1.0) for _ in range(100))


async def test_position_margin_past_ten_per_second_gets_429(
    sim: SimServer, sim_account: SimAccount
) -> None:
    body = {"symbol": "PERP_ETH_USDC", "amount": "1", "type": "ADD"}
    position = sim.engine.accounts[sim_account.account_id].positions[("PERP_ETH_USDC", "ISOLATED")]
    before = position.margin
    async with httpx.AsyncClient() as http:
        client = SimClient(sim.rest_url, sim_account, http)
        responses = await asyncio.gather(
            *(client.request("POST", "/v1/position_margin", body) for _ in range(12))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 10 + [429] * 2
        rejected = next(r for r in responses if r.status_code == 429).json()
        assert rejected["success"] is False and rejected["code"] == -1003
        # a second key on another account is unaffected
        other = await open_account(sim.rest_url, usdc="10")
        assert (
            await SimClient(sim.rest_url, other, http).request("GET", "/v1/positions")
        ).status_code == 200
    assert position.margin == before + 10  # the refused requests changed nothing
