"""The simulator's admin API (``/sim/``) and its client, over real loopback sockets."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx

from guardbot.sim.admin import SimAccount
from guardbot.sim.client import SimClient
from guardbot.sim.server import SimServer


async def test_sim_account_fixture_holds_isolated_and_cross(
    sim: SimServer, sim_account: SimAccount
) -> None:
    account = sim.engine.accounts[sim_account.account_id]
    isolated = account.positions[("PERP_ETH_USDC", "ISOLATED")]
    cross = account.positions[("PERP_ETH_USDC", "CROSS")]
    assert (isolated.qty, cross.qty) == (Decimal("1"), Decimal("0.5"))
    # 10,000 - margin |q|*price*(1/10 + 0.0006) - taker fees of 0.06 % on both fills
    fees = (isolated.cost_position + cross.cost_position) * Decimal("0.0006")
    assert isolated.margin == isolated.cost_position * Decimal("0.1006")
    assert account.holding == Decimal("10000") - isolated.margin - fees
    assert sim_account.orderly_secret not in repr(sim_account)


async def test_admin_rejects_bad_input_with_a_clear_message(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    response = await http.post(sim.rest_url + "/sim/accounts", json={"usdc": "5"})
    assert response.status_code == 400
    assert "orderly_key" in response.json()["message"]
    response = await http.post(
        sim.rest_url + "/sim/marks", json={"symbol": "PERP_NOPE_USDC", "price": "1"}
    )
    assert response.status_code == 400 and "PERP_NOPE_USDC" in response.json()["message"]


async def test_admin_state_reports_accounts_marks_and_counters(
    sim: SimServer, sim_account: SimAccount, client: SimClient, http: httpx.AsyncClient
) -> None:
    await client.data("GET", "/v1/positions")
    state = (await http.get(sim.rest_url + "/sim/state")).json()
    (account,) = state["accounts"]
    assert account["account_id"] == sim_account.account_id
    isolated = next(p for p in account["positions"] if p["margin_mode"] == "ISOLATED")
    assert isolated["margin"] == "301.800000" and isolated["liquidation_price"] == "2714.49"
    assert state["counters"]["requests"] >= 1
    assert state["insurance_fund"] == "0.000000" and state["liquidations"] == []
    assert sim_account.orderly_secret.removeprefix("ed25519:") not in json.dumps(state)
