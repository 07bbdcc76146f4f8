"""Drives the official ``orderly-evm-connector`` SDK against a running simulator, for
``tests/sim/test_sdk.py``. It runs under the SDK's own interpreter (the environment .ci/run
builds from .ci/sdk-requirements.txt: the SDK pins cryptography<43, which must never reach
guardbot's users), so it imports nothing from guardbot.

    python sdk_client.py STEP < {"rest_url", "ws_url", "account_id", "key", "secret"}

prints one JSON object: the SDK's answers for STEP (positions, leverage, margin, push).
"""

from __future__ import annotations

import json
import queue
import sys
import time
from typing import Any

from orderly_evm_connector.lib import utils as sdk_utils
from orderly_evm_connector.rest import Rest
from orderly_evm_connector.websocket.websocket_api import WebsocketPrivateAPIClient

ETH = "PERP_ETH_USDC"


def positions(rest: Rest, _: dict[str, str]) -> dict[str, Any]:
    return {"all": rest.get_all_positions_info(), "one": rest.get_one_position_info(ETH)}


def leverage(rest: Rest, _: dict[str, str]) -> dict[str, Any]:
    return {
        "updated": rest.update_leverages(20, "PERP_BTC_USDC", "ISOLATED"),
        "legacy": rest.update_leverage_configuration(5),  # {leverage} only: every cross symbol
        "current": rest.get_leverage_setting("PERP_BTC_USDC"),
        "all": rest.get_all_leverages(),
    }


def margin(rest: Rest, _: dict[str, str]) -> dict[str, Any]:
    return {
        "before": rest.get_all_positions_info(),
        "added": rest.adjust_position_margin(ETH, "100.25", "ADD"),
        "after_add": rest.get_all_positions_info(),
        "reduced": rest.adjust_position_margin(ETH, "40", "REDUCE"),
        "after_reduce": rest.get_all_positions_info(),
        "too_much": rest.adjust_position_margin(ETH, "100000", "REDUCE"),
    }


def isolated_margin(rows: list[dict[str, Any]], mode_key: str = "margin_mode") -> Any:
    return next((row["margin"] for row in rows if row[mode_key] == "ISOLATED"), None)


def push(rest: Rest, args: dict[str, str]) -> dict[str, Any]:
    """Subscribe to ``position`` over the private WebSocket, add 7 USDC, and return every
    message up to the first ``position`` push whose isolated margin moved (or 10 s)."""
    # The SDK reads its WebSocket URL from ORDERLY_TEST_PRIVATE_WS_URL once, at import.
    sdk_utils.test_private_ws_url = args["ws_url"]
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    client = WebsocketPrivateAPIClient(
        orderly_testnet=True, orderly_account_id=args["account_id"],
        orderly_key=args["key"], orderly_secret=args["secret"],
        on_message=lambda _, text: messages.put(json.loads(text)), timeout=5,
    )  # fmt: skip
    seen: list[dict[str, Any]] = []
    try:
        client.get_position()  # authenticates, then subscribes
        seen += [messages.get(True, 5), messages.get(True, 5)]
        before = isolated_margin(rest.get_all_positions_info()["data"]["rows"])
        added = rest.adjust_position_margin(ETH, "7", "ADD")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                message = messages.get(True, 0.5)
            except queue.Empty:
                continue
            seen.append(message)
            if message.get("topic") == "position" and isolated_margin(
                message["data"]["positions"], mode_key="marginMode"
            ) not in (None, before):
                break
    finally:
        client.stop()
    return {"added": added, "messages": seen}


STEPS = {"positions": positions, "leverage": leverage, "margin": margin, "push": push}


def main() -> None:
    args = json.load(sys.stdin)
    rest = Rest(
        orderly_key=args["key"], orderly_secret=args["secret"],
        orderly_account_id=args["account_id"], orderly_testnet=True,
        orderly_api_url=args["rest_url"], timeout=5,
    )  # fmt: skip
    json.dump(STEPS[sys.argv[1]](rest, args), sys.stdout)


if __name__ == "__main__":
    main()
