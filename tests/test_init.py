"""``guardbot init`` as an operator runs it: the file it writes, for each preset, is one
``check-config`` accepts (as written for sim; once the account is filled in for mainnet and
testnet), it never overwrites without ``--force``, and the sim one guards the simulator's
own demo account."""

from __future__ import annotations

import asyncio
import json
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from guardbot.cli import main
from guardbot.sim.cli import open_demo_accounts
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_the_sim_config_passes_check_config_as_written(tmp_path: Path) -> None:
    path = tmp_path / "guardbot.toml"
    written = invoke("init", "--output", str(path))  # sim is the default preset
    assert written.exit_code == 0, written.output
    assert str(path) in written.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the paper account's secret
    assert tomllib.loads(path.read_text())["exchange"]["preset"] == "sim"
    checked = invoke("check-config", "--config", str(path))
    assert checked.exit_code == 0, checked.output
    assert "configuration OK" in checked.output


@pytest.mark.parametrize("preset", ["mainnet", "testnet"])
def test_a_live_config_explains_the_key_and_starts_in_dry_run(tmp_path: Path,
                                                              preset: str) -> None:
    path = tmp_path / "guardbot.toml"
    assert invoke("init", "--preset", preset, "--output", str(path)).exit_code == 0
    text = path.read_text()
    config = tomllib.loads(text)
    assert config["exchange"]["preset"] == preset
    assert config["guard"]["dry_run"] is True
    (account,) = config["accounts"]
    assert "orderly_secret" not in account, "a real secret never goes in the file"
    assert account["orderly_secret_env"] == "GUARDBOT_MAIN_SECRET"
    for step in ("`read` and `trading` scopes", "never in this file nor in git",
                 "orderly_secret_file", "check-config --online", "dry_run = false"):
        assert step in text, step
    # As written, the placeholders are refused naming the key, in one line, no traceback.
    refused = invoke("check-config", "--config", str(path))
    assert refused.exit_code != 0 and "account_id" in refused.output
    assert "Traceback" not in refused.output
    # Filled in as the steps say, it passes.
    key, secret = generate_key()
    filled = (text.replace("0x<the account id: 0x and 64 hex digits>", "0x" + "ab" * 32)
              .replace("ed25519:<the API key's public key>", key))
    path.write_text(filled)
    checked = invoke("check-config", "--config", str(path),
                     env={"GUARDBOT_MAIN_SECRET": secret})
    assert checked.exit_code == 0, checked.output


def test_init_never_overwrites_without_force(tmp_path: Path) -> None:
    path = tmp_path / "guardbot.toml"
    path.write_text("# mine\n")
    refused = invoke("init", "--preset", "testnet", "--output", str(path))
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        f"Error: {path} already exists; pass --force to overwrite it"]
    assert path.read_text() == "# mine\n"
    forced = invoke("init", "--preset", "testnet", "--output", str(path), "--force")
    assert forced.exit_code == 0, forced.output
    assert 'preset = "testnet"' in path.read_text()


def test_an_unknown_preset_is_one_usage_line(tmp_path: Path) -> None:
    result = invoke("init", "--preset", "devnet", "--output", str(tmp_path / "x.toml"))
    assert result.exit_code == 2 and "devnet" in result.output
    assert not (tmp_path / "x.toml").exists()


async def test_the_sim_config_guards_the_simulators_demo_account(tmp_path: Path) -> None:
    """`guardbot sim --demo-accounts 1` and the sim config agree: status reads the account
    with the written key and secret (the URLs pointed at this test's simulator)."""
    path = tmp_path / "guardbot.toml"
    assert invoke("init", "--output", str(path)).exit_code == 0
    async with SimServer(seed=7, port=0) as sim:
        (demo,) = open_demo_accounts(sim, 1, 7)
        env = {"GUARDBOT__EXCHANGE__REST_URL": sim.rest_url,
               "GUARDBOT__EXCHANGE__PUBLIC_WS_URL": sim.public_ws_url,
               "GUARDBOT__EXCHANGE__PRIVATE_WS_URL": sim.private_ws_url}  # fmt: skip
        result = await asyncio.to_thread(
            invoke, "status", "--config", str(path), "--json", env=env)
    assert result.exit_code == 0, result.output
    (account,) = json.loads(result.output)["accounts"]
    assert account["account_id"] == demo.account_id
    assert any(p["symbol"] == "PERP_ETH_USDC" for p in account["positions"])
