"""Request authentication over real sockets: what is accepted and what is refused (§2)."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.auth import AuthFailure, decode_signature, verify
from guardbot.sim.client import SimClient
from guardbot.sim.keys import generate_key, sign
from guardbot.sim.server import SimServer

from .helpers import headers_for

ADD = {"symbol": "PERP_ETH_USDC", "amount": "10", "type": "ADD"}


def margin_of(sim: SimServer, account: SimAccount) -> object:
    return sim.engine.accounts[account.account_id].positions[("PERP_ETH_USDC", "ISOLATED")].margin


@pytest.mark.parametrize(
    "variant", ["urlsafe", "urlsafe-unpadded", "standard", "standard-unpadded"]
)
def test_every_signature_encoding_is_accepted(variant: str) -> None:
    key, secret = generate_key()
    raw = base64.urlsafe_b64decode(sign(secret, "1700000000000"))
    encode = base64.urlsafe_b64encode if variant.startswith("urlsafe") else base64.b64encode
    text = encode(raw).decode()
    if variant.endswith("unpadded"):
        text = text.rstrip("=")
    assert decode_signature(text) == raw
    verify(key, text, b"1700000000000")


def test_garbage_signature_is_a_format_error() -> None:
    with pytest.raises(AuthFailure) as failure:
        decode_signature("not*base64")
    assert failure.value.code == -1001


async def test_valid_request_with_sdk_style_json_and_standard_base64(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    """The official SDK signs ``json.dumps`` with spaces and sends standard base64."""
    body = json.dumps(ADD)  # '{"symbol": "PERP_ETH_USDC", ...}': spaces, as the SDK sends
    ts = int(time.time() * 1000)
    raw = base64.urlsafe_b64decode(
        sign(sim_account.orderly_secret, f"{ts}POST/v1/position_margin{body}")
    )
    headers = headers_for(sim_account, "POST", "/v1/position_margin", body, timestamp_ms=ts)
    headers["orderly-signature"] = base64.b64encode(raw).decode()
    headers["Content-Type"] = "application/json;charset=utf-8"
    response = await http.post(sim.rest_url + "/v1/position_margin", content=body, headers=headers)
    assert response.status_code == 200, response.text


async def refused(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    envelope = response.json()
    assert envelope["success"] is False and envelope["code"] == code and envelope["message"]


async def test_wrong_signature_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    _, other_secret = generate_key()
    forged = SimAccount(sim_account.account_id, sim_account.orderly_key, other_secret)
    before = margin_of(sim, sim_account)
    await refused(
        await SimClient(sim.rest_url, forged, http).request("POST", "/v1/position_margin", ADD),
        401,
        -1001,
    )
    assert margin_of(sim, sim_account) == before


async def test_stale_timestamp_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    client = SimClient(sim.rest_url, sim_account, http)
    stale = int(time.time() * 1000) - 301_000
    await refused(await client.request("GET", "/v1/positions", timestamp_ms=stale), 401, -1001)
    future = int(time.time() * 1000) + 301_000
    await refused(await client.request("GET", "/v1/positions", timestamp_ms=future), 401, -1001)


async def test_unknown_key_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    key, secret = generate_key()  # validly signed, but never registered
    stranger = SimAccount(sim_account.account_id, key, secret)
    response = await SimClient(sim.rest_url, stranger, http).request("GET", "/v1/positions")
    await refused(response, 401, -1002)


async def test_key_of_another_account_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    other = await open_account(sim.rest_url, usdc="10")
    borrowed = SimAccount(sim_account.account_id, other.orderly_key, other.orderly_secret)
    response = await SimClient(sim.rest_url, borrowed, http).request("GET", "/v1/positions")
    await refused(response, 401, -1002)


async def test_expired_key_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    key, secret = generate_key()
    sim.engine.add_key(sim_account.account_id, key, "read,trading", expires_ms=sim.now_ms() - 1)
    expired = SimAccount(sim_account.account_id, key, secret)
    response = await SimClient(sim.rest_url, expired, http).request("GET", "/v1/positions")
    await refused(response, 401, -1002)


async def test_read_only_key_cannot_write_but_can_read(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    key, secret = generate_key()
    response = await http.post(
        sim.rest_url + "/sim/keys",
        json={"account_id": sim_account.account_id, "orderly_key": key, "scopes": "read"},
    )
    assert response.status_code == 200
    reader = SimClient(sim.rest_url, SimAccount(sim_account.account_id, key, secret), http)
    before = margin_of(sim, sim_account)
    await refused(await reader.request("POST", "/v1/position_margin", ADD), 401, -1002)
    assert margin_of(sim, sim_account) == before
    assert (await reader.request("GET", "/v1/positions")).status_code == 200
    # leverage writes need only read (§2)
    leverage = {"symbol": "PERP_BTC_USDC", "leverage": 5}
    assert (await reader.request("POST", "/v1/client/leverage", leverage)).status_code == 200


async def test_tampered_body_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    signed_body = json.dumps(ADD, separators=(",", ":"))
    headers = headers_for(sim_account, "POST", "/v1/position_margin", signed_body)
    tampered = signed_body.replace('"10"', '"1000"')
    before = margin_of(sim, sim_account)
    response = await http.post(
        sim.rest_url + "/v1/position_margin", content=tampered, headers=headers
    )
    await refused(response, 401, -1001)
    assert margin_of(sim, sim_account) == before


async def test_tampered_query_is_refused(
    sim: SimServer, sim_account: SimAccount, http: httpx.AsyncClient
) -> None:
    signed_path = "/v1/position/PERP_ETH_USDC?margin_mode=ISOLATED"
    headers = headers_for(sim_account, "GET", signed_path)
    response = await http.get(
        sim.rest_url + "/v1/position/PERP_ETH_USDC?margin_mode=CROSS", headers=headers
    )
    await refused(response, 401, -1001)
    assert (await http.get(sim.rest_url + signed_path, headers=headers)).status_code == 200


async def test_missing_headers_are_refused(sim: SimServer, http: httpx.AsyncClient) -> None:
    await refused(await http.get(sim.rest_url + "/v1/positions"), 401, -1001)


async def test_public_endpoints_need_no_signature(sim: SimServer, http: httpx.AsyncClient) -> None:
    info = (await http.get(sim.rest_url + "/v1/public/info/PERP_ETH_USDC")).json()["data"]
    assert (info["base_imr"], info["base_mmr"], info["imr_factor"]) == (0.01, 0.006, 2.512e-07)
    rows = (await http.get(sim.rest_url + "/v1/public/futures")).json()["data"]["rows"]
    assert {r["symbol"] for r in rows} == set(sim.engine.markets)
    for path in (
        "/v1/public/system_info",
        "/v1/public/token",
        "/v1/public/chain_info",
        "/v1/public/info",
    ):
        assert (await http.get(sim.rest_url + path)).json()["success"] is True
