"""The simulator's WebSockets over real sockets: private auth (message and URL), position and
balance pushes, subscribe/unsubscribe acks and errors, pings both ways, public mark prices."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.client import SimClient
from guardbot.sim.keys import generate_key, sign
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


async def receive(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a server ping."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 3.0))
        if message.get("event") != "ping":
            return dict(message)


async def until_topic(ws: ClientConnection, topic: str) -> dict[str, Any]:
    while True:
        message = await receive(ws)
        if message.get("topic") == topic:
            return message


def auth_message(account: SimAccount, timestamp_ms: int | None = None) -> str:
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    params = {
        "orderly_key": account.orderly_key,
        "sign": sign(account.orderly_secret, str(ts)),
        "timestamp": ts,
    }
    return json.dumps({"id": "a1", "event": "auth", "params": params})


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """Paused marks (speed 0): these tests make every change themselves, so no tick push
    can arrive between an action and the push it causes."""
    async with SimServer(seed=7, scenario="calm", speed=0) as server:
        yield server


@pytest.fixture
async def private(sim: SimServer, sim_account: SimAccount) -> AsyncIterator[ClientConnection]:
    async with connect(sim.private_ws_url.format(account_id=sim_account.account_id)) as ws:
        await ws.send(auth_message(sim_account))
        reply = await receive(ws)
        assert reply["event"] == "auth" and reply["success"] is True and reply["id"] == "a1"
        yield ws


async def test_position_push_after_margin_add(
    sim: SimServer, sim_account: SimAccount, private: ClientConnection
) -> None:
    await private.send(json.dumps({"id": "s1", "topic": "position", "event": "subscribe"}))
    ack = await receive(private)
    assert ack == {"id": "s1", "event": "subscribe", "success": True, "ts": ack["ts"]}
    async with httpx.AsyncClient() as http:
        client = SimClient(sim.rest_url, sim_account, http)
        await client.data(
            "POST",
            "/v1/position_margin",
            {"symbol": "PERP_ETH_USDC", "amount": "50", "type": "ADD"},
        )
    push = await until_topic(private, "position")
    (entry,) = [p for p in push["data"]["positions"] if p["marginMode"] == "ISOLATED"]
    assert entry["symbol"] == "PERP_ETH_USDC"
    assert entry["margin"] == 351.8 and entry["positionQty"] == 1.0
    assert isinstance(entry["seq"], int) and entry["seq"] > 2**53
    assert {"costPosition", "averageOpenPrice", "markPrice", "estLiqPrice", "leverage"} <= set(
        entry
    )


async def test_balance_push_shows_isolated_margin(
    sim: SimServer, sim_account: SimAccount, private: ClientConnection
) -> None:
    await private.send(json.dumps({"id": "s2", "topic": "balance", "event": "subscribe"}))
    await receive(private)
    sim.engine.adjust_margin(sim_account.account_id, "PERP_ETH_USDC", "REDUCE", "1.8")
    sim.flush()
    push = await until_topic(private, "balance")
    usdc = push["data"]["balances"]["USDC"]
    assert usdc["isolatedMargin"] == 300.0
    assert isinstance(usdc["holding"], float)


async def test_subscribe_before_auth_and_bad_topic_are_refused(
    sim: SimServer, sim_account: SimAccount
) -> None:
    async with connect(sim.private_ws_url.format(account_id=sim_account.account_id)) as ws:
        await ws.send(json.dumps({"id": "x", "topic": "position", "event": "subscribe"}))
        refused = await receive(ws)
        assert refused["success"] is False and refused["errorMsg"] == "Auth is needed."
        await ws.send(auth_message(sim_account))
        assert (await receive(ws))["success"] is True
        await ws.send(json.dumps({"id": "y", "topic": "nonsense", "event": "subscribe"}))
        assert (await receive(ws))["errorMsg"] == "invalid topic nonsense"
        await ws.send(json.dumps({"id": "z", "event": "subscribe"}))
        assert (await receive(ws))["errorMsg"] == "missing required parameter topic"
        await ws.send(json.dumps({"id": "u", "topic": "position", "event": "unsubscribe"}))
        unsub = await receive(ws)
        assert unsub["event"] == "unsubscribe" and unsub["success"] is True


async def test_bad_auth_is_answered_then_disconnected(
    sim: SimServer, sim_account: SimAccount
) -> None:
    stranger_key, stranger_secret = generate_key()
    stranger = SimAccount(sim_account.account_id, stranger_key, stranger_secret)
    async with connect(sim.private_ws_url.format(account_id=sim_account.account_id)) as ws:
        await ws.send(auth_message(stranger))
        reply = await receive(ws)
        assert reply["success"] is False and reply["errorMsg"] == "auth failed"
        with pytest.raises(ConnectionClosed):
            await receive(ws)


async def test_stale_ws_timestamp_fails_auth(sim: SimServer, sim_account: SimAccount) -> None:
    async with connect(sim.private_ws_url.format(account_id=sim_account.account_id)) as ws:
        await ws.send(auth_message(sim_account, int(time.time() * 1000) - 400_000))
        assert (await receive(ws))["errorMsg"] == "auth failed"


async def test_url_authentication(sim: SimServer, sim_account: SimAccount) -> None:
    ts = int(time.time() * 1000)
    signature = sign(sim_account.orderly_secret, str(ts))
    url = sim.private_ws_url.format(account_id=sim_account.account_id) + (
        f"?orderly_key={sim_account.orderly_key}&timestamp={ts}&sign={signature}"
    )
    async with connect(url) as ws:
        await ws.send(json.dumps({"id": "p", "topic": "position", "event": "subscribe"}))
        assert (await receive(ws))["success"] is True


async def test_client_ping_is_answered(private: ClientConnection) -> None:
    await private.send(json.dumps({"event": "ping"}))
    pong = await receive(private)
    assert pong["event"] == "pong" and isinstance(pong["ts"], int)


async def test_server_pings_and_drops_silent_clients() -> None:
    async with SimServer(speed=0, ping_interval_s=0.05, max_missed_pongs=3) as server:
        key, secret = generate_key()
        account_id = server.engine.create_account(key)
        account = SimAccount(account_id, key, secret)
        url = server.private_ws_url.format(account_id=account_id)
        async with connect(url) as polite, connect(url) as silent:
            for ws in (polite, silent):
                await ws.send(auth_message(account))
            pings = 0
            while pings < 5:
                message = json.loads(await asyncio.wait_for(polite.recv(), 2))
                if message.get("event") == "ping":
                    pings += 1
                    await polite.send(json.dumps({"event": "pong"}))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(silent.recv(), 2)
            await polite.send(json.dumps({"event": "ping"}))
            while (reply := await receive(polite))["event"] == "auth":
                pass
            assert reply["event"] == "pong"  # the polite client is still connected


async def test_public_markprices(sim: SimServer) -> None:
    async with connect(sim.public_ws_url.format(account_id="anyone")) as ws:
        await ws.send(json.dumps({"id": "m", "topic": "markprices", "event": "subscribe"}))
        assert (await receive(ws))["success"] is True
        await ws.send(
            json.dumps({"id": "e", "topic": "PERP_ETH_USDC@markprice", "event": "subscribe"})
        )
        assert (await receive(ws))["success"] is True
        await ws.send(
            json.dumps({"id": "d", "topic": "PERP_NOPE_USDC@markprice", "event": "subscribe"})
        )
        assert (await receive(ws))["errorMsg"] == "invalid symbol PERP_NOPE_USDC"
        sim.advance(1)
        marks = await until_topic(ws, "markprices")
        prices = {m["symbol"]: m["price"] for m in marks["data"]}
        assert set(prices) == set(sim.engine.markets)
        one = await until_topic(ws, "PERP_ETH_USDC@markprice")
        assert one["data"] == {"symbol": "PERP_ETH_USDC", "price": prices["PERP_ETH_USDC"]}


async def test_mark_moves_and_liquidation_are_pushed(
    sim: SimServer, sim_account: SimAccount, private: ClientConnection
) -> None:
    await private.send(json.dumps({"id": "s", "topic": "position", "event": "subscribe"}))
    await receive(private)
    sim.engine.pin_mark("PERP_ETH_USDC", Decimal("2800"))
    sim.flush()
    repriced = await until_topic(private, "position")
    marks = {p["marginMode"]: p["markPrice"] for p in repriced["data"]["positions"]}
    assert marks == {"ISOLATED": 2800.0, "CROSS": 2800.0}
    sim.engine.pin_mark("PERP_ETH_USDC", Decimal("2700"))  # below the isolated 2714.49
    sim.flush()
    while True:
        push = await until_topic(private, "position")
        closed = [p for p in push["data"]["positions"] if p["marginMode"] == "ISOLATED"]
        if closed and closed[0]["positionQty"] == 0:
            break
    assert closed[0]["margin"] == 0.0
    cross = sim.engine.accounts[sim_account.account_id].positions[("PERP_ETH_USDC", "CROSS")]
    assert cross.qty == Decimal("0.5")  # the cross position is untouched


async def test_pushes_reach_only_the_accounts_own_connections(
    sim: SimServer, sim_account: SimAccount, private: ClientConnection
) -> None:
    other = await open_account(sim.rest_url, usdc="1000", positions=[(ETH, "ISOLATED", "0.1", 10)])
    async with connect(sim.private_ws_url.format(account_id=other.account_id)) as stranger:
        await stranger.send(auth_message(other))
        assert (await receive(stranger))["success"] is True
        for ws in (private, stranger):
            await ws.send(json.dumps({"id": "p", "topic": "position", "event": "subscribe"}))
            await ws.send(json.dumps({"id": "a", "topic": "account", "event": "subscribe"}))
            await receive(ws)
            await receive(ws)
        sim.engine.adjust_margin(sim_account.account_id, ETH, "ADD", "3")
        sim.engine.set_leverage(sim_account.account_id, 20, "PERP_BTC_USDC", "CROSS")
        sim.flush()
        push = await until_topic(private, "position")
        assert push["data"]["positions"][0]["margin"] == 304.8
        detail = (await until_topic(private, "account"))["data"]["accountDetail"]
        assert {"symbol": "PERP_BTC_USDC", "marginMode": "CROSS", "leverage": 20} in detail[
            "symbolLeverage"
        ]
        sim.engine.adjust_margin(other.account_id, ETH, "ADD", "1")
        sim.flush()
        seen: list[dict[str, Any]] = []  # all the stranger got, up to its own ADD's push
        while True:
            seen.append(await receive(stranger))
            message = seen[-1]
            # 0.1 * 3000 * (1/10 + 0.0006) + 1
            if (
                message.get("topic") == "position"
                and message["data"]["positions"][0]["margin"] == 31.18
            ):
                break
        assert [m for m in seen if m.get("topic") == "account"] == []
        margins = [
            p["margin"]
            for m in seen
            if m.get("topic") == "position"
            for p in m["data"]["positions"]
        ]
        assert 304.8 not in margins and 301.8 not in margins
