"""The official ``orderly-evm-connector`` SDK as a client of the simulator (done-when of the
simulator issue): it signs in, lists positions, reads and sets leverage, adds and reduces
margin, and receives a ``position`` push over the private WebSocket.

The SDK pins ``cryptography<43``, nine majors behind what guardbot's users have, so it lives
in an environment of its own (``.venv-sdk``, built by .ci/run from .ci/sdk-requirements.txt;
``GUARDBOT_SDK_PYTHON`` names another interpreter). The simulator serves on the test's event
loop; ``sdk_client.py`` makes the SDK's calls under that interpreter, in a subprocess, and
prints the SDK's answers, which the tests check here. Without that environment the tests are
skipped, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from guardbot.sim.admin import SimAccount
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"
ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("sdk_client.py")
BUILD = "python3 -m venv .venv-sdk && .venv-sdk/bin/pip install -r .ci/sdk-requirements.txt"


def sdk_python() -> Path:
    """The SDK environment's interpreter; skips (fails under CI) when there is none."""
    path = Path(os.environ.get("GUARDBOT_SDK_PYTHON") or ROOT / ".venv-sdk" / "bin" / "python")
    if path.is_file():
        return path
    reason = f"the official SDK's environment is absent ({path}); build it with: {BUILD}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


async def run_sdk(sim: SimServer, account: SimAccount, step: str) -> dict[str, Any]:
    """Run one step of ``sdk_client.py`` under the SDK's interpreter against ``sim``."""
    python = sdk_python()
    args = {"rest_url": sim.rest_url,
            "ws_url": sim.private_ws_url.removesuffix("/{account_id}"),
            "account_id": account.account_id, "key": account.orderly_key,
            "secret": account.orderly_secret}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        str(python), str(CLIENT), step, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(json.dumps(args).encode()), 60)
    assert process.returncode == 0, err.decode()
    answers: dict[str, Any] = json.loads(out, parse_float=Decimal)
    return answers


def isolated_row(response: dict[str, Any]) -> dict[str, Any]:
    assert response["success"] is True, response
    rows = [r for r in response["data"]["rows"] if r["margin_mode"] == "ISOLATED"]
    assert len(rows) == 1 and rows[0]["symbol"] == ETH
    return dict(rows[0])


def margin_of(row: dict[str, Any]) -> Decimal:
    return Decimal(str(row["margin"]))


def test_the_sdk_environment_is_not_the_project_environment() -> None:
    """The SDK's pins never reach guardbot's own environment (nor its users')."""
    try:
        python = sdk_python()
    except pytest.skip.Exception:
        python = None
    assert python is None or python.absolute().parents[1] != Path(sys.prefix).absolute()
    with pytest.raises(ImportError):
        __import__("orderly_evm_connector")


async def test_sdk_lists_positions(sim: SimServer, sim_account: SimAccount) -> None:
    answers = await run_sdk(sim, sim_account, "positions")
    positions, cross = answers["all"], answers["one"]
    assert {r["margin_mode"] for r in positions["data"]["rows"]} == {"ISOLATED", "CROSS"}
    assert isolated_row(positions)["position_qty"] == 1
    assert cross["data"]["margin_mode"] == "CROSS" and cross["data"]["position_qty"] == Decimal(
        "0.5")


async def test_sdk_reads_and_sets_leverage(sim: SimServer, sim_account: SimAccount) -> None:
    answers = await run_sdk(sim, sim_account, "leverage")
    assert answers["updated"]["data"] == {
        "symbol": "PERP_BTC_USDC", "margin_mode": "ISOLATED", "leverage": 20}
    assert answers["legacy"]["success"] is True  # {leverage} only: every cross symbol
    assert answers["current"]["data"] == {
        "symbol": "PERP_BTC_USDC", "margin_mode": "CROSS", "leverage": 5}
    rows = answers["all"]["data"]["rows"]
    assert {"symbol": "PERP_BTC_USDC", "margin_mode": "ISOLATED", "leverage": 20} in rows


async def test_sdk_adds_and_reduces_margin_by_exactly_the_amount(
    sim: SimServer, sim_account: SimAccount
) -> None:
    answers = await run_sdk(sim, sim_account, "margin")
    before = margin_of(isolated_row(answers["before"]))
    assert answers["added"]["success"] is True and "data" not in answers["added"]
    after_add = margin_of(isolated_row(answers["after_add"]))
    assert after_add - before == Decimal("100.25")
    assert answers["reduced"]["success"] is True
    after_reduce = margin_of(isolated_row(answers["after_reduce"]))
    assert after_add - after_reduce == Decimal("40")
    too_much = answers["too_much"]
    assert too_much["success"] is False and too_much["code"] == -1101


async def test_sdk_receives_a_position_push(sim: SimServer, sim_account: SimAccount) -> None:
    answers = await run_sdk(sim, sim_account, "push")
    auth, ack, *rest = answers["messages"]
    assert auth["event"] == "auth"
    assert (ack["event"], ack["success"]) == ("subscribe", True)
    assert answers["added"]["success"] is True
    pushes = [m for m in rest if m.get("topic") == "position"]
    assert pushes, rest
    entries = [p for p in pushes[-1]["data"]["positions"] if p["marginMode"] == "ISOLATED"]
    assert Decimal(str(entries[0]["margin"])) == Decimal("301.8") + 7
