"""The official ``orderly-evm-connector`` SDK as a client of the simulator (done-when of the
simulator issue): it signs in, lists positions, reads and sets leverage, adds and reduces
margin, and receives a ``position`` push over the private WebSocket.

The SDK is synchronous (requests, websocket-client threads), so its calls run in worker
threads while the simulator serves on the test's event loop. Its WebSocket URL is taken from
``ORDERLY_TEST_PRIVATE_WS_URL``, read once at import into a module global; the test sets
that global, the equivalent of exporting the variable before start-up.
"""

from __future__ import annotations

import asyncio
import json
import queue
from decimal import Decimal
from typing import Any

import pytest
from orderly_evm_connector.lib import utils as sdk_utils
from orderly_evm_connector.rest import Rest
from orderly_evm_connector.websocket.websocket_api import WebsocketPrivateAPIClient

from guardbot.sim.admin import SimAccount
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


@pytest.fixture
def rest(sim: SimServer, sim_account: SimAccount) -> Rest:
    return Rest(
        orderly_key=sim_account.orderly_key,
        orderly_secret=sim_account.orderly_secret,
        orderly_account_id=sim_account.account_id,
        orderly_testnet=True,
        orderly_api_url=sim.rest_url,
        timeout=5,
    )


def isolated_row(response: dict[str, Any]) -> dict[str, Any]:
    assert response["success"] is True, response
    rows = [r for r in response["data"]["rows"] if r["margin_mode"] == "ISOLATED"]
    assert len(rows) == 1 and rows[0]["symbol"] == ETH
    return dict(rows[0])


def margin_of(row: dict[str, Any]) -> Decimal:
    return Decimal(str(row["margin"]))


async def test_sdk_lists_positions(rest: Rest) -> None:
    positions = await asyncio.to_thread(rest.get_all_positions_info)
    assert {r["margin_mode"] for r in positions["data"]["rows"]} == {"ISOLATED", "CROSS"}
    assert isolated_row(positions)["position_qty"] == 1.0
    cross = await asyncio.to_thread(rest.get_one_position_info, ETH)
    assert cross["data"]["margin_mode"] == "CROSS" and cross["data"]["position_qty"] == 0.5


async def test_sdk_reads_and_sets_leverage(rest: Rest) -> None:
    updated = await asyncio.to_thread(rest.update_leverages, 20, "PERP_BTC_USDC", "ISOLATED")
    assert updated["data"] == {"symbol": "PERP_BTC_USDC", "margin_mode": "ISOLATED", "leverage": 20}
    legacy = await asyncio.to_thread(rest.update_leverage_configuration, 5)
    assert legacy["success"] is True  # {leverage} only: every cross symbol
    current = await asyncio.to_thread(rest.get_leverage_setting, "PERP_BTC_USDC")
    assert current["data"] == {"symbol": "PERP_BTC_USDC", "margin_mode": "CROSS", "leverage": 5}
    rows = (await asyncio.to_thread(rest.get_all_leverages))["data"]["rows"]
    assert {"symbol": "PERP_BTC_USDC", "margin_mode": "ISOLATED", "leverage": 20} in rows


async def test_sdk_adds_and_reduces_margin_by_exactly_the_amount(rest: Rest) -> None:
    before = margin_of(isolated_row(await asyncio.to_thread(rest.get_all_positions_info)))
    added = await asyncio.to_thread(rest.adjust_position_margin, ETH, "100.25", "ADD")
    assert added["success"] is True and "data" not in added
    after_add = margin_of(isolated_row(await asyncio.to_thread(rest.get_all_positions_info)))
    assert after_add - before == Decimal("100.25")
    reduced = await asyncio.to_thread(rest.adjust_position_margin, ETH, "40", "REDUCE")
    assert reduced["success"] is True
    after_reduce = margin_of(isolated_row(await asyncio.to_thread(rest.get_all_positions_info)))
    assert after_add - after_reduce == Decimal("40")
    too_much = await asyncio.to_thread(rest.adjust_position_margin, ETH, "100000", "REDUCE")
    assert too_much["success"] is False and too_much["code"] == -1101


async def test_sdk_receives_a_position_push(
    sim: SimServer, sim_account: SimAccount, rest: Rest, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = sim.private_ws_url.removesuffix("/{account_id}")
    monkeypatch.setattr(sdk_utils, "test_private_ws_url", base)
    messages: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_message(_: object, text: str) -> None:
        messages.put(json.loads(text))

    client = await asyncio.to_thread(
        WebsocketPrivateAPIClient,
        orderly_testnet=True,
        orderly_account_id=sim_account.account_id,
        orderly_key=sim_account.orderly_key,
        orderly_secret=sim_account.orderly_secret,
        on_message=on_message,
        timeout=5,
    )
    try:
        await asyncio.to_thread(client.get_position)  # authenticates, then subscribes

        async def next_message() -> dict[str, Any]:
            return await asyncio.to_thread(messages.get, True, 5)

        assert (await next_message())["event"] == "auth"
        ack = await next_message()
        assert (ack["event"], ack["success"]) == ("subscribe", True)
        await asyncio.to_thread(rest.adjust_position_margin, ETH, "7", "ADD")
        while True:
            message = await next_message()
            if message.get("topic") != "position":
                continue
            entries = [p for p in message["data"]["positions"] if p["marginMode"] == "ISOLATED"]
            if entries and Decimal(str(entries[0]["margin"])) == Decimal("301.8") + 7:
                break
    finally:
        await asyncio.to_thread(client.stop)
