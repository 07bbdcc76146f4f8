"""``guardbot sim``: demo accounts, the guard config it writes, and the real process."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
from click.testing import CliRunner

from guardbot.config import load_config
from guardbot.sim.cli import config_text, open_demo_accounts, sim, write_config
from guardbot.sim.server import SimServer


def test_demo_accounts_are_funded_and_hold_isolated_positions() -> None:
    server = SimServer(speed=0)
    accounts = open_demo_accounts(server, 3, seed=7)
    assert len({a.account_id for a in accounts}) == 3
    for index, account in enumerate(accounts):
        state = server.engine.accounts[account.account_id]
        isolated = [p for p in state.open_positions() if p.margin_mode == "ISOLATED"]
        assert len(isolated) == 1 + index
        assert all(p.margin > 0 for p in isolated)
        assert state.holding > Decimal(0)
    assert accounts[0].orderly_secret not in repr(accounts[0])
    again = open_demo_accounts(SimServer(speed=0), 3, seed=7)
    assert [a.orderly_key for a in again] == [a.orderly_key for a in accounts]  # per seed


def test_written_config_is_what_the_guard_reads(tmp_path: Path) -> None:
    server = SimServer(speed=0, port=8999)
    accounts = open_demo_accounts(server, 2, seed=7)
    path = tmp_path / "guardbot.toml"
    write_config(path, config_text(server, accounts))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = load_config(path)
    assert settings.exchange.urls()["rest_url"] == "http://127.0.0.1:8999"
    assert [a.account_id for a in settings.accounts] == [a.account_id for a in accounts]
    assert settings.accounts[0].secret().get_secret_value() == accounts[0].orderly_secret
    assert [p.use for p in settings.policies] == ["topup", "sweep"]


def test_bad_options_are_named() -> None:
    runner = CliRunner()
    result = runner.invoke(sim, ["--scenario", "moon"])
    assert result.exit_code == 2 and "unknown scenario" in result.output
    result = runner.invoke(sim, ["--write-config", "x.toml"])
    assert result.exit_code == 2 and "--demo-accounts" in result.output


def test_the_command_serves_until_terminated(tmp_path: Path) -> None:
    config = tmp_path / "sim.toml"
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "guardbot"),
            "sim",
            "--port",
            "0",
            "--speed",
            "60",
            "--demo-accounts",
            "2",
            "--write-config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("simulated Orderly exchange at http://127.0.0.1:"), first
        rest_url = first.rsplit(" ", 1)[1].strip()
        lines = [process.stdout.readline() for _ in range(6)]
        assert lines[3].startswith("demo1  0x") and lines[4].startswith("demo2  0x")
        assert "written to" in lines[5]
        secret = load_config(config).accounts[0].secret().get_secret_value()
        assert secret.removeprefix("ed25519:") not in "".join(lines)  # never printed
        state = httpx.get(rest_url + "/sim/state", timeout=5).json()
        assert len(state["accounts"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
