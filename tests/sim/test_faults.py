"""Every fault kind happens when switched on, over real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from guardbot.sim.admin import SimAccount
from guardbot.sim.client import SimClient
from guardbot.sim.faults import Faults, FaultsError
from guardbot.sim.keys import sign
from guardbot.sim.server import SimServer

ADD = {"symbol": "PERP_ETH_USDC", "amount": "5", "type": "ADD"}


async def set_faults(http: httpx.AsyncClient, sim: SimServer, **settings: float) -> None:
    response = await http.post(sim.rest_url + "/sim/faults", json=settings)
    assert response.status_code == 200, response.text


def isolated_margin(sim: SimServer, account: SimAccount) -> Decimal:
    account_state = sim.engine.accounts[account.account_id]
    return account_state.positions[("PERP_ETH_USDC", "ISOLATED")].margin


async def test_latency(sim: SimServer, client: SimClient, http: httpx.AsyncClient) -> None:
    await set_faults(http, sim, latency_ms=150)
    started = time.monotonic()
    assert (await client.request("GET", "/v1/positions")).status_code == 200
    assert time.monotonic() - started >= 0.15
    assert sim.counters["fault_latency"] == 1


async def test_server_errors_do_not_apply_the_change(
    sim: SimServer, sim_account: SimAccount, client: SimClient, http: httpx.AsyncClient
) -> None:
    await set_faults(http, sim, error_rate=1.0)
    before = isolated_margin(sim, sim_account)
    response = await client.request("POST", "/v1/position_margin", ADD)
    assert response.status_code == 500 and response.json()["success"] is False
    assert isolated_margin(sim, sim_account) == before
    assert sim.counters["fault_5xx"] == 1


async def test_injected_rate_limits(
    sim: SimServer, client: SimClient, http: httpx.AsyncClient
) -> None:
    await set_faults(http, sim, rate_limit_rate=1.0)
    response = await client.request("GET", "/v1/positions")
    assert response.status_code == 429 and response.json()["code"] == -1003
    assert sim.counters["fault_429"] == 1


async def test_lost_response_after_the_change_was_applied(
    sim: SimServer, sim_account: SimAccount, client: SimClient, http: httpx.AsyncClient
) -> None:
    await set_faults(http, sim, lost_response_rate=1.0)
    before = isolated_margin(sim, sim_account)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.request("POST", "/v1/position_margin", ADD)
    assert isolated_margin(sim, sim_account) == before + 5  # applied, never confirmed
    assert sim.counters["fault_lost_response"] == 1
    await set_faults(http, sim, lost_response_rate=0)
    assert (await client.request("GET", "/v1/positions")).status_code == 200


async def test_rates_draw_per_request(
    sim: SimServer, client: SimClient, http: httpx.AsyncClient
) -> None:
    await set_faults(http, sim, error_rate=0.5)
    statuses = [
        (await client.request("GET", "/v1/client/leverages")).status_code for _ in range(40)
    ]
    assert 5 <= statuses.count(500) <= 35 and 5 <= statuses.count(200) <= 35


async def test_websocket_drops(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    await set_faults(http, sim, ws_drop_every_s=0.2)
    ts = int(time.time() * 1000)
    auth = {
        "id": "a",
        "event": "auth",
        "params": {
            "orderly_key": sim_account.orderly_key,
            "sign": sign(sim_account.orderly_secret, str(ts)),
            "timestamp": ts,
        },
    }
    async with connect(sim.private_ws_url.format(account_id=sim_account.account_id)) as ws:
        await ws.send(json.dumps(auth))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(3):
                while True:
                    await ws.recv()
    assert sim.counters["fault_ws_drop"] >= 1


async def test_admin_rejects_unknown_or_out_of_range_faults(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    for bad in ({"error_rate": 2}, {"explode": 1}, {"latency_ms": "slow"}):
        response = await http.post(sim.rest_url + "/sim/faults", json=bad)
        assert response.status_code == 400 and response.json()["message"]
    assert sim.faults.as_dict() == Faults().as_dict()  # nothing half-applied


def test_update_is_all_or_nothing() -> None:
    faults = Faults()
    with pytest.raises(FaultsError):
        faults.update({"latency_ms": 10, "error_rate": -1})
    assert faults.latency_ms == 0
