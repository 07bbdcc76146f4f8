"""The simulator's server over real loopback sockets: the contract others code against and
the request pipeline (unknown paths, the admin API's loopback rule)."""

from __future__ import annotations

import socket

import httpx
import pytest

from guardbot.sim.server import SimServer


async def test_contract_urls_and_engine(sim: SimServer) -> None:
    assert sim.port > 0
    assert sim.rest_url == f"http://127.0.0.1:{sim.port}"
    assert sim.public_ws_url == f"ws://127.0.0.1:{sim.port}/ws/stream/{{account_id}}"
    assert sim.private_ws_url == (f"ws://127.0.0.1:{sim.port}/v2/ws/private/stream/{{account_id}}")
    assert set(sim.engine.markets) >= {"PERP_ETH_USDC", "PERP_BTC_USDC", "PERP_SOL_USDC"}


async def test_unknown_path_is_404_in_the_envelope(sim: SimServer, http: httpx.AsyncClient) -> None:
    response = await http.get(sim.rest_url + "/v1/nothing_here")
    assert response.status_code == 404 and response.json()["success"] is False


def _own_outside_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_admin_api_refuses_non_loopback_clients() -> None:
    address = _own_outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    async with SimServer(speed=0, host="0.0.0.0") as server, httpx.AsyncClient() as http:
        outside = await http.get(f"http://{address}:{server.port}/sim/state")
        inside = await http.get(f"http://127.0.0.1:{server.port}/sim/state")
    assert outside.status_code == 403 and inside.status_code == 200
    assert outside.json()["success"] is False
