"""``guardbot status`` through the real CLI against the simulated exchange over loopback.

The command runs its own event loop, so it is invoked in a worker thread while the
simulator keeps serving on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from guardbot.cli import main
from guardbot.exits import AUTH as EXIT_AUTH
from guardbot.exits import UNREACHABLE as EXIT_UNREACHABLE
from guardbot.exits import USAGE as EXIT_CONFIG
from guardbot.logs import FORMAT_ENV, LEVEL_ENV
from guardbot.risk import liquidation_distance
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

ETH = "PERP_ETH_USDC"


@pytest.fixture(autouse=True)
def default_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's default logging, whatever an earlier test left in the environment."""
    monkeypatch.setenv(LEVEL_ENV, "INFO")
    monkeypatch.setenv(FORMAT_ENV, "text")


@pytest.fixture
async def sim() -> AsyncIterator[SimServer]:
    """Overrides the shared fixture: frozen marks (speed 0) so figures compare exactly."""
    async with SimServer(seed=7, scenario="calm", speed=0) as server:
        yield server


def write_config(
    path: Path, rest_url: str, accounts: list[tuple[str, str, str, str]], extra: str = ""
) -> Path:
    text = f'[exchange]\npreset = "sim"\nrest_url = "{rest_url}"\n{extra}\n'
    for name, account_id, key, secret in accounts:
        text += (
            f'[[accounts]]\nname = "{name}"\naccount_id = "{account_id}"\n'
            f'orderly_key = "{key}"\norderly_secret = "{secret}"\n'
        )
    path.write_text(text)
    return path


def funded_account(sim: SimServer, name: str = "main") -> tuple[str, str, str, str]:
    key, secret = generate_key()
    account_id = sim.engine.create_account(key, "read,trading", Decimal(10000))
    sim.engine.open_position(account_id, ETH, "ISOLATED", Decimal(1), 10)
    sim.engine.open_position(account_id, ETH, "CROSS", Decimal("-0.5"), 5)
    return name, account_id, key, secret


async def run_status(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, main, ["status", *args])


async def test_json_shows_every_position_exactly(sim: SimServer, tmp_path: Path) -> None:
    account = funded_account(sim)
    config = write_config(tmp_path / "g.toml", sim.rest_url, [account])
    result = await run_status("--config", str(config), "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["accounts"]
    engine_account = sim.engine.account(account[1])
    figures = sim.engine.account_view(engine_account)
    assert entry["ok"] and entry["name"] == "main"
    assert Decimal(entry["free_collateral"]) == figures.free_collateral
    (usdc,) = entry["holdings"]
    assert Decimal(usdc["holding"]) == sim.engine.holding_view(engine_account).holding
    by_mode = {p["margin_mode"]: p for p in entry["positions"]}
    assert set(by_mode) == {"ISOLATED", "CROSS"}
    for mode, shown in by_mode.items():
        view = sim.engine.position_view(engine_account, ETH, mode)
        assert Decimal(shown["qty"]) == view.qty
        assert Decimal(shown["margin"]) == view.margin
        assert Decimal(shown["mark_price"]) == view.mark_price
        assert shown["leverage"] == view.leverage
        assert view.est_liq_price is not None
        assert Decimal(shown["liquidation_price"]) == view.est_liq_price
        distance = liquidation_distance(view.mark_price, view.est_liq_price, view.qty)
        assert distance is not None
        assert Decimal(shown["liquidation_distance_pct"]) == (distance * 100).quantize(
            Decimal("0.01")
        )
    assert Decimal(by_mode["ISOLATED"]["liquidation_distance_pct"]) > 0


async def test_table_for_people(sim: SimServer, tmp_path: Path) -> None:
    accounts = [funded_account(sim, "main"), funded_account(sim, "spare")]
    config = write_config(tmp_path / "g.toml", sim.rest_url, accounts)
    result = await run_status("--config", str(config))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "account main (" in out and "account spare (" in out
    assert "free collateral" in out and "holding USDC" in out
    header = next(line for line in out.splitlines() if "SYMBOL" in line).split()
    assert header == ["SYMBOL", "MODE", "QTY", "MARK", "MARGIN", "LEV", "LIQ", "PRICE",
                      "DISTANCE"]
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(ETH)]
    assert sorted(r[1] for r in rows) == ["CROSS", "CROSS", "ISOLATED", "ISOLATED"]
    assert all(r[-1].endswith("%") and r[5].endswith("x") for r in rows)


async def test_unreachable_exchange_is_one_line_and_exit_4(
    sim: SimServer, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "g.toml", f"http://127.0.0.1:{port}", [funded_account(sim)])
    result = await run_status("--config", str(config))
    assert result.exit_code == EXIT_UNREACHABLE
    (line,) = result.stderr.splitlines()
    assert line.startswith("guardbot status: account main: exchange unreachable:")
    assert "Traceback" not in result.output


async def test_bad_key_is_one_line_and_exit_3(sim: SimServer, tmp_path: Path) -> None:
    name, account_id, _, _ = funded_account(sim)
    stranger_key, stranger_secret = generate_key()  # valid, but not this account's key
    config = write_config(
        tmp_path / "g.toml", sim.rest_url, [(name, account_id, stranger_key, stranger_secret)]
    )
    result = await run_status("--config", str(config), "--json")
    assert result.exit_code == EXIT_AUTH
    (line,) = result.stderr.splitlines()
    assert "bad key" in line and "-1002" in line
    assert json.loads(result.stdout)["accounts"][0]["ok"] is False
    assert stranger_secret not in result.output


async def test_secret_not_matching_the_key_is_a_config_error_found_before_connecting(
    sim: SimServer, tmp_path: Path
) -> None:
    name, account_id, key, _ = funded_account(sim)
    _, other_secret = generate_key()
    config = write_config(
        tmp_path / "g.toml", sim.rest_url, [(name, account_id, key, other_secret)]
    )
    result = await run_status("--config", str(config))
    assert result.exit_code == EXIT_CONFIG
    (line,) = result.stderr.splitlines()
    assert line.startswith('guardbot status: account main: bad config: accounts[1] (name "main")')
    assert "does not belong to key" in line and "code None" not in line
    assert other_secret.removeprefix("ed25519:") not in result.output
    assert sim.counters["requests"] == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[exchange\n", "not valid TOML"),
        ('[exchange]\npreset = "moon"\n', "exchange.preset"),
        ('[exchange]\nprest = "sim"\n', "exchange.prest: unknown key"),
        ("", "has no [[accounts]]"),
    ],
)
async def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, reason: str) -> None:
    config = tmp_path / "g.toml"
    config.write_text(text)
    result = await run_status("--config", str(config))
    assert result.exit_code == EXIT_CONFIG
    (line,) = result.stderr.splitlines()
    assert line.startswith("guardbot status: bad config:") and reason in line


async def test_missing_config_file_and_unset_secret_env(
    tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = await run_status("--config", str(tmp_path / "nope.toml"))
    assert missing.exit_code == EXIT_CONFIG and "cannot read the config file" in missing.stderr
    name, account_id, key, _ = funded_account(sim)
    config = tmp_path / "g.toml"
    config.write_text(
        f'[exchange]\nrest_url = "{sim.rest_url}"\n[[accounts]]\nname = "{name}"\n'
        f'account_id = "{account_id}"\norderly_key = "{key}"\n'
        'orderly_secret_env = "GUARDBOT_TEST_UNSET_SECRET"\n'
    )
    monkeypatch.delenv("GUARDBOT_TEST_UNSET_SECRET", raising=False)
    result = await run_status("--config", str(config))
    assert result.exit_code == EXIT_CONFIG
    (line,) = result.stderr.splitlines()
    assert "GUARDBOT_TEST_UNSET_SECRET is not set" in line


async def test_a_malformed_secret_is_a_config_error_not_an_authentication_failure(
    sim: SimServer, tmp_path: Path
) -> None:
    name, account_id, key, _ = funded_account(sim)
    config = write_config(tmp_path / "g.toml", sim.rest_url, [(name, account_id, key, "0OIl")])
    result = await run_status("--config", str(config))
    assert result.exit_code == EXIT_CONFIG, result.output
    (line,) = result.stderr.splitlines()
    assert "not a base58 ed25519 seed" in line and "code None" not in line


async def test_one_bad_account_does_not_hide_the_others(sim: SimServer, tmp_path: Path) -> None:
    good = funded_account(sim, "good")
    name, account_id, _, _ = funded_account(sim, "bad")
    stranger_key, stranger_secret = generate_key()
    config = write_config(
        tmp_path / "g.toml", sim.rest_url, [good, (name, account_id, stranger_key, stranger_secret)]
    )
    result = await run_status("--config", str(config), "--json")
    assert result.exit_code == EXIT_AUTH
    shown = {a["name"]: a for a in json.loads(result.stdout)["accounts"]}
    assert shown["good"]["ok"] and len(shown["good"]["positions"]) == 2
    assert not shown["bad"]["ok"] and "bad key" in shown["bad"]["error"]
    assert result.stderr.splitlines() == [f"guardbot status: account bad: {shown['bad']['error']}"]
