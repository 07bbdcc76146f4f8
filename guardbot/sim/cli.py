"""``guardbot sim``: run the simulated Orderly exchange in the foreground.

    guardbot sim --port 8900 --seed 7 --scenario crash --speed 60 \\
        --demo-accounts 3 --write-config guardbot-sim.toml

``--demo-accounts N`` opens N funded accounts holding isolated positions and prints their ids
and public keys; their secrets go only into the ``--write-config`` file (mode 600), a guard
config pointing at this simulator, ready for ``guardbot status`` / ``guardbot run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import click

from guardbot.config import ConfigError, parse_config
from guardbot.sim.keys import key_for_seed
from guardbot.sim.prices import SCENARIOS, ScenarioError
from guardbot.sim.server import SimServer

DEMO_USDC = Decimal("10000")
# (symbol, margin_mode, qty, leverage): a spread of sizes, sides and risk per account.
DEMO_POSITIONS = (
    ("PERP_ETH_USDC", "ISOLATED", Decimal("2"), 10),
    ("PERP_BTC_USDC", "ISOLATED", Decimal("-0.05"), 20),
    ("PERP_SOL_USDC", "ISOLATED", Decimal("40"), 5),
    ("PERP_ETH_USDC", "CROSS", Decimal("0.5"), 10),
)


@dataclass(frozen=True, slots=True)
class DemoAccount:
    name: str
    account_id: str
    orderly_key: str
    orderly_secret: str = field(repr=False)


def open_demo_accounts(sim: SimServer, count: int, seed: int) -> list[DemoAccount]:
    """N accounts with deterministic keys (from ``seed``), 10,000 USDC and open positions;
    account ``i`` holds the first ``1 + i % 3`` isolated positions plus a cross one."""
    accounts = []
    for index in range(count):
        key, secret = key_for_seed(
            ((seed % 2**64).to_bytes(8, "big") + index.to_bytes(8, "big")).rjust(32, b"\x01")
        )
        account_id = sim.engine.create_account(key, "read,trading", DEMO_USDC)
        isolated = [p for p in DEMO_POSITIONS if p[1] == "ISOLATED"][: 1 + index % 3]
        for symbol, mode, qty, leverage in (*isolated, DEMO_POSITIONS[-1]):
            sim.engine.open_position(account_id, symbol, mode, qty, leverage)
        accounts.append(DemoAccount(f"demo{index + 1}", account_id, key, secret))
    sim.engine.drain_changes()
    return accounts


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(sim: SimServer, accounts: list[DemoAccount]) -> str:
    """A guard config (the format ``guardbot.config`` reads) for ``accounts`` on ``sim``."""
    lines = [
        "# Written by `guardbot sim --write-config`: the guard, pointed at this simulator.",
        "[exchange]",
        'preset = "sim"',
        f"rest_url = {_toml_string(sim.rest_url)}",
        f"public_ws_url = {_toml_string(sim.public_ws_url)}",
        f"private_ws_url = {_toml_string(sim.private_ws_url)}",
        "",
        "[audit]",
        'url = "sqlite:///guardbot-audit.db"',
        "",
    ]
    for account in accounts:
        lines += [
            "[[accounts]]",
            f"name = {_toml_string(account.name)}",
            f"account_id = {_toml_string(account.account_id)}",
            f"orderly_key = {_toml_string(account.orderly_key)}",
            f"orderly_secret = {_toml_string(account.orderly_secret)}",
            "",
        ]
    lines += ["[[policies]]", 'use = "topup"', "", "[[policies]]", 'use = "sweep"', ""]
    return "\n".join(lines)


def write_config(path: Path, text: str) -> None:
    """Write the config readable by its owner only (it holds secrets), after checking that
    the guard's own loader accepts it."""
    parse_config(tomllib.loads(text))
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


async def serve(sim: SimServer, demo_accounts: int, seed: int, config: Path | None) -> None:
    async with sim:
        accounts = open_demo_accounts(sim, demo_accounts, seed)
        click.echo(f"simulated Orderly exchange at {sim.rest_url}")
        click.echo(f"  public WS   {sim.public_ws_url}")
        click.echo(f"  private WS  {sim.private_ws_url}")
        click.echo(f"  admin       {sim.rest_url}/sim/state")
        for account in accounts:
            click.echo(f"{account.name}  {account.account_id}  {account.orderly_key}")
        if config is not None and accounts:
            try:
                write_config(config, config_text(sim, accounts))
            except ConfigError as exc:
                raise click.ClickException(f"the generated config is invalid: {exc}") from None
            except OSError as exc:
                raise click.ClickException(f"cannot write {config}: {exc.strerror}") from None
            click.echo(f"guard config (with the secrets) written to {config}")
        elif accounts:
            click.echo("secrets are not printed: pass --write-config PATH to get them")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        click.echo("stopping")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8900, show_default=True, type=click.IntRange(0, 65535))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option(
    "--scenario",
    default="calm",
    show_default=True,
    help=f"{', '.join(SCENARIOS)} or csv:PATH (header t,<SYMBOL>...; one row per second)",
)
@click.option(
    "--speed",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="simulated seconds per real second (0: marks move only via /sim/marks)",
)
@click.option("--demo-accounts", default=0, show_default=True, type=click.IntRange(0, 10_000))
@click.option(
    "--write-config",
    "config",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="write a guard config for the demo accounts here (mode 600)",
)
@click.option("--no-rate-limits", is_flag=True, help="turn off the documented rate limits")
def sim(
    host: str,
    port: int,
    seed: int,
    scenario: str,
    speed: float,
    demo_accounts: int,
    config: Path | None,
    no_rate_limits: bool,
) -> None:
    """Run the simulated Orderly exchange (REST, WebSockets and /sim/ admin on one port)."""
    if config is not None and demo_accounts == 0:
        raise click.UsageError("--write-config needs --demo-accounts N (N >= 1)")
    try:
        server = SimServer(
            seed=seed,
            scenario=scenario,
            speed=speed,
            host=host,
            port=port,
            rate_limits=not no_rate_limits,
        )
    except ScenarioError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None
    try:
        asyncio.run(serve(server, demo_accounts, seed, config))
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc.strerror}") from None
