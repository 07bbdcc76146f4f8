"""``guardbot status``: a one-shot look at every guarded account, through the Orderly client.

For each account: holdings, free collateral, and every open position with its mark, margin,
leverage, liquidation price and distance to liquidation (``risk.liquidation_distance``,
signed: negative once the mark is past the liquidation price). A table for people, ``--json``
for scripts (money as decimal strings, never floats).

A problem is one line on stderr and a non-zero exit, never a traceback, with the codes
every command shares (``guardbot.exits``): 2 bad config (a secret that is not its key's
included, found before connecting), 3 key refused by the exchange, 4 exchange unreachable,
5 other exchange error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from guardbot import exits
from guardbot.config import AccountSettings, ConfigError, Settings, load_config
from guardbot.domain import AccountSnapshot, Holding, Position
from guardbot.exchange.errors import AuthError, ExchangeError, RetryLater
from guardbot.exits import one_line
from guardbot.risk import liquidation_distance

PERCENT = Decimal("0.01")


@dataclass
class AccountStatus:
    """What ``status`` learned about one account, or why it could not."""

    name: str
    account_id: str
    holdings: tuple[Holding, ...] = ()
    snapshot: AccountSnapshot | None = None
    problem: str = ""
    exit_code: int = 0
    positions: list[Position] = field(default_factory=list)


def distance_pct(position: Position) -> Decimal | None:
    """Distance to liquidation in percent of the mark, two decimals."""
    if position.mark_price <= 0:
        return None
    distance = liquidation_distance(position.mark_price, position.est_liq_price, position.qty)
    return None if distance is None else (distance * 100).quantize(PERCENT)


async def account_status(account: AccountSettings, settings: Settings) -> AccountStatus:
    """Read one account; every failure becomes ``problem`` plus an exit code."""
    from guardbot.exchange.client import OrderlyExchange

    result = AccountStatus(account.name, account.account_id)
    try:
        account.check_secret()  # a local problem, before anything is sent
        async with OrderlyExchange.from_settings(
            account, settings.exchange, max_attempts=2
        ) as exchange:
            result.holdings = await exchange.get_holdings()
            result.snapshot = await exchange.get_positions()
    except (ConfigError, ValueError) as exc:
        result.problem, result.exit_code = f"bad config: {one_line(str(exc))}", exits.USAGE
    except AuthError as exc:
        result.problem, result.exit_code = f"bad key: {exc}", exits.AUTH
    except RetryLater as exc:
        result.problem, result.exit_code = f"exchange unreachable: {exc}", exits.UNREACHABLE
    except ExchangeError as exc:
        result.problem, result.exit_code = f"exchange error: {exc}", exits.EXCHANGE
    if result.snapshot is not None:
        result.positions = [p for p in result.snapshot.positions if p.is_open]
    return result


async def collect(settings: Settings) -> list[AccountStatus]:
    return list(await asyncio.gather(*(account_status(a, settings) for a in settings.accounts)))


def _text(value: Decimal | int | None) -> str | None:
    return None if value is None else f"{value:f}" if isinstance(value, Decimal) else str(value)


def as_json(statuses: list[AccountStatus]) -> dict[str, Any]:
    accounts = []
    for status in statuses:
        entry: dict[str, Any] = {
            "name": status.name,
            "account_id": status.account_id,
            "ok": not status.problem,
        }
        if status.problem:
            entry["error"] = status.problem
        if status.snapshot is not None:
            entry["free_collateral"] = _text(status.snapshot.free_collateral)
            entry["total_collateral_value"] = _text(status.snapshot.total_collateral_value)
            entry["holdings"] = [
                {"token": h.token, "holding": _text(h.holding), "frozen": _text(h.frozen),
                 "isolated_margin": _text(h.isolated_margin)}
                for h in status.holdings
            ]
            entry["positions"] = [
                {
                    "symbol": p.symbol,
                    "margin_mode": p.margin_mode.value,
                    "qty": _text(p.qty),
                    "mark_price": _text(p.mark_price),
                    "margin": _text(p.margin),
                    "leverage": p.leverage,
                    "liquidation_price": _text(p.est_liq_price),
                    "liquidation_distance_pct": _text(distance_pct(p)),
                }
                for p in status.positions
            ]
        accounts.append(entry)
    return {"accounts": accounts}


COLUMNS = ("SYMBOL", "MODE", "QTY", "MARK", "MARGIN", "LEV", "LIQ PRICE", "DISTANCE")


def as_table(statuses: list[AccountStatus]) -> str:
    lines: list[str] = []
    for status in statuses:
        lines.append(f"account {status.name} ({status.account_id})")
        if status.snapshot is None:
            lines.append(f"  {status.problem}")
            continue
        lines.append(
            f"  free collateral {status.snapshot.free_collateral:f}, "
            f"total collateral {status.snapshot.total_collateral_value:f}"
        )
        for h in status.holdings:
            lines.append(
                f"  holding {h.token} {h.holding:f} (frozen {h.frozen:f}, "
                f"isolated margin {h.isolated_margin:f})"
            )
        if not status.positions:
            lines.append("  no open positions")
            continue
        rows = [COLUMNS] + [
            (
                p.symbol,
                p.margin_mode.value,
                f"{p.qty:f}",
                f"{p.mark_price:f}",
                f"{p.margin:f}",
                f"{p.leverage}x",
                _text(p.est_liq_price) or "-",
                f"{pct}%" if (pct := distance_pct(p)) is not None else "-",
            )
            for p in status.positions
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            cells = [c.ljust(w) if i < 2 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(row, widths, strict=True))]
            lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


@click.command("status")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file naming the accounts.",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def status(ctx: click.Context, config_path: Path, json_output: bool) -> None:
    """Show holdings, free collateral and every position of each guarded account."""
    try:
        settings = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"guardbot status: bad config: {one_line(str(exc))}", err=True)
        ctx.exit(exits.USAGE)
    if not settings.accounts:
        click.echo(f"guardbot status: bad config: {config_path} has no [[accounts]]", err=True)
        ctx.exit(exits.USAGE)
    from guardbot.preflight import quiet_exchange_log

    with quiet_exchange_log():  # each failed call already ends up in the one line below
        statuses = asyncio.run(collect(settings))
    click.echo(json.dumps(as_json(statuses), indent=2) if json_output else as_table(statuses))
    failed = [s for s in statuses if s.problem]
    for s in failed:
        click.echo(f"guardbot status: account {s.name}: {s.problem}", err=True)
    if failed:
        ctx.exit(failed[0].exit_code)
