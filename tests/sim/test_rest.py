"""Orderly's REST API on the simulator, over real loopback sockets: the envelope and JSON
types, and every endpoint's answers and refusals."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest

from guardbot.sim.admin import SimAccount
from guardbot.sim.client import SimClient
from guardbot.sim.margin import MARKETS
from guardbot.sim.server import SimServer

from .helpers import headers_for


async def test_positions_envelope_and_json_types(client: SimClient) -> None:
    response = await client.request("GET", "/v1/positions")
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["success"] is True and isinstance(envelope["timestamp"], int)
    data = envelope["data"]
    assert isinstance(data["free_collateral"], float)
    rows = {row["margin_mode"]: row for row in data["rows"]}
    isolated = rows["ISOLATED"]
    assert isolated["symbol"] == "PERP_ETH_USDC"
    assert isolated["position_qty"] == 1.0 and isolated["margin"] == 301.8
    assert isinstance(isolated["leverage"], int) and isolated["leverage"] == 10
    # seq exceeds 2**53 and must arrive exact: parse the raw text, not floats.
    raw = json.loads(response.text, parse_int=int, parse_float=Decimal)
    seqs = [row["seq"] for row in raw["data"]["rows"]]
    assert all(isinstance(s, int) and s > 2**53 for s in seqs)
    for row in data["rows"]:
        for name, value in row.items():
            if name in ("symbol", "margin_mode"):
                assert isinstance(value, str)
            else:
                assert isinstance(value, int | float), name


async def test_position_defaults_to_cross_and_zero_position(client: SimClient) -> None:
    cross = await client.data("GET", "/v1/position/PERP_ETH_USDC")
    assert cross["margin_mode"] == "CROSS" and cross["position_qty"] == 0.5
    isolated = await client.data("GET", "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED")
    assert isolated["position_qty"] == 1.0
    none = await client.data("GET", "/v1/position/PERP_BTC_USDC?margin_mode=ISOLATED")
    assert none["position_qty"] == 0.0 and none["margin"] == 0.0 and none["est_liq_price"] == 0


async def test_add_and_reduce_margin_move_exact_amounts(sim: SimServer, client: SimClient) -> None:
    before = await client.data("GET", "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED")
    holding = (await client.data("GET", "/v1/client/holding"))["holding"][0]
    body = {"symbol": "PERP_ETH_USDC", "amount": "123.456789", "type": "ADD"}
    response = await client.request("POST", "/v1/position_margin", body)
    assert response.status_code == 200
    assert set(response.json()) == {"success", "timestamp"}  # no data (§3)
    after = await client.data("GET", "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED")
    assert Decimal(str(after["margin"])) - Decimal(str(before["margin"])) == Decimal("123.456789")
    assert after["seq"] > before["seq"]
    holding_after = (await client.data("GET", "/v1/client/holding"))["holding"][0]
    assert Decimal(str(holding["holding"])) - Decimal(str(holding_after["holding"])) == Decimal(
        "123.456789"
    )
    assert Decimal(str(holding_after["isolated_margin"])) == Decimal(str(after["margin"]))
    await client.data(
        "POST",
        "/v1/position_margin",
        {"symbol": "PERP_ETH_USDC", "amount": "23.45", "type": "REDUCE"},
    )
    final = await client.data("GET", "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED")
    assert Decimal(str(final["margin"])) == Decimal("301.8") + Decimal("123.456789") - Decimal(
        "23.45"
    )


async def test_leverage_and_margin_mode_endpoints(client: SimClient) -> None:
    set_one = await client.data(
        "POST",
        "/v1/client/leverages",
        {"symbol": "PERP_BTC_USDC", "leverage": 25, "margin_mode": "ISOLATED"},
    )
    assert set_one == {"symbol": "PERP_BTC_USDC", "margin_mode": "ISOLATED", "leverage": 25}
    read = await client.data("GET", "/v1/client/leverage?symbol=PERP_BTC_USDC&margin_mode=ISOLATED")
    assert read == set_one
    rows = (await client.data("GET", "/v1/client/leverages"))["rows"]
    assert len(rows) == 2 * len(MARKETS) and set_one in rows  # every symbol, both modes
    response = await client.request(
        "POST",
        "/v1/client/margin_mode",
        {"symbol": "PERP_BTC_USDC", "default_margin_mode": "ISOLATED"},
    )
    assert response.status_code == 200 and "data" not in response.json()
    modes = (await client.data("GET", "/v1/client/margin_modes"))["rows"]
    assert {"symbol": "PERP_BTC_USDC", "default_margin_mode": "ISOLATED"} in modes
    refused = await client.request(
        "POST",
        "/v1/client/margin_mode",
        {"symbol": "PERP_ETH_USDC", "default_margin_mode": "ISOLATED"},
    )  # a CROSS position is open on ETH
    assert refused.status_code == 400 and refused.json()["code"] == -1012


async def test_order_endpoints(sim: SimServer, client: SimClient) -> None:
    sim.engine.pin_mark("PERP_SOL_USDC", Decimal(150))
    resting = await client.data(
        "POST",
        "/v1/order",
        {
            "symbol": "PERP_SOL_USDC",
            "order_type": "LIMIT",
            "side": "BUY",
            "order_price": 140,
            "order_quantity": 2,
            "margin_mode": "ISOLATED",
        },
    )
    assert isinstance(resting["order_id"], int) and resting["order_price"] == 140.0
    holding = (await client.data("GET", "/v1/client/holding"))["holding"][0]
    assert holding["isolated_order_frozen"] == 28.168  # 280 * (1/10 + 0.0006)
    market = await client.data(
        "POST",
        "/v1/order",
        {
            "symbol": "PERP_SOL_USDC",
            "order_type": "MARKET",
            "side": "SELL",
            "order_quantity": 1,
            "reduce_only": False,
            "client_order_id": "m-1",
        },
    )
    assert market["client_order_id"] == "m-1"
    orders = (await client.data("GET", "/v1/orders?symbol=PERP_SOL_USDC"))["rows"]
    assert {o["status"] for o in orders} == {"NEW", "FILLED"}
    cancelled = await client.data(
        "DELETE", f"/v1/order?order_id={resting['order_id']}&symbol=PERP_SOL_USDC"
    )
    assert cancelled == {"status": "CANCEL_SENT"}
    again = await client.request("DELETE", f"/v1/order?order_id={resting['order_id']}")
    assert again.status_code == 400 and again.json()["code"] == -1006
    cross = await client.data("GET", "/v1/position/PERP_SOL_USDC")
    assert cross["position_qty"] == -1.0


async def test_account_endpoints(sim_account: SimAccount, client: SimClient) -> None:
    info = await client.data("GET", "/v1/client/info")
    assert info["account_id"] == sim_account.account_id
    assert info["imr_factor"]["PERP_ETH_USDC"] == 2.512e-07
    account = await client.data("GET", "/v1/account_info")
    assert "total_pnl_24h" in account and "total_pnl_24_h" not in account
    rows = (await client.data("GET", "/v1/client/aggregate/holding"))["rows"]
    assert rows[0]["account_id"] == sim_account.account_id
    assert rows[0]["isolated_margin"] == 301.8 and rows[0]["isolated_order_frozen"] == 0.0


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"symbol": "PERP_ETH_USDC", "amount": "5", "type": "ADD", "mode": "x"}, -1004, "mode"),
        ({"symbol": "PERP_ETH_USDC", "type": "ADD"}, -1005, "amount"),
        ({"symbol": "PERP_ETH_USDC", "amount": "-5", "type": "ADD"}, -1005, "positive"),
        ({"symbol": "PERP_BTC_USDC", "amount": "5", "type": "ADD"}, -1006, "PERP_BTC_USDC"),
        ({"symbol": "PERP_ETH_USDC", "amount": "99999", "type": "ADD"}, -1101, "Insufficient"),
        ({"symbol": "PERP_ETH_USDC", "amount": "500", "type": "REDUCE"}, -1101, "Insufficient"),
    ],
)
async def test_position_margin_bad_input_is_named_and_changes_nothing(
    sim: SimServer,
    sim_account: SimAccount,
    client: SimClient,
    body: dict[str, str],
    code: int,
    words: str,
) -> None:
    account = sim.engine.accounts[sim_account.account_id]
    before = (account.holding, account.positions[("PERP_ETH_USDC", "ISOLATED")].margin)
    response = await client.request("POST", "/v1/position_margin", body)
    envelope = response.json()
    assert response.status_code == 400
    assert envelope == {"success": False, "code": code, "message": envelope["message"]}
    assert words in envelope["message"]
    assert (account.holding, account.positions[("PERP_ETH_USDC", "ISOLATED")].margin) == before


async def test_body_that_is_not_json(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    headers = headers_for(sim_account, "POST", "/v1/position_margin", "{not json")
    response = await http.post(
        sim.rest_url + "/v1/position_margin", content="{not json", headers=headers
    )
    assert response.status_code == 400 and response.json()["code"] == -1005
