"""The guard's commands: ``guardbot run``, ``guardbot check-config`` and ``guardbot demo``.

Heavy modules are imported inside each command so ``guardbot --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from decimal import Decimal
from pathlib import Path

import click

from guardbot import exits
from guardbot.config import ConfigError, Settings, load_config, permission_warning
from guardbot.exits import CommandError

log = logging.getLogger(__name__)

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file (default: none; settings from GUARDBOT__* environment only).",
)


def _load(config_path: Path | None) -> Settings:
    """The settings, or exit 2 naming every problem with the file."""
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise CommandError(str(exc), exits.USAGE) from None


def _checked(settings: Settings) -> None:
    """Everything ``run`` checks before trading (``preflight.check_settings``), or exit 2."""
    from guardbot.preflight import check_settings

    try:
        check_settings(settings)
    except ConfigError as exc:
        raise CommandError(str(exc), exits.USAGE) from None


def _warn_if_readable(config_path: Path | None) -> None:
    """A log WARNING (so JSON log output stays JSON) if others may read the config."""
    warning = None if config_path is None else permission_warning(config_path)
    if warning:
        log.warning("%s", warning)


@click.command("check-config")
@CONFIG_OPTION
@click.option("--online", is_flag=True,
              help="Also sign one read per account and show each key's scopes.")
def check_config(config_path: Path | None, online: bool) -> None:
    """Check the configuration as `run` would, without trading: secrets against their keys,
    URLs, policies, free ports, at least one account. No network unless --online."""
    from guardbot.daemon import describe_settings

    settings = _load(config_path)
    _warn_if_readable(config_path)
    _checked(settings)
    click.echo(describe_settings(settings))
    if online:
        from guardbot.preflight import check_keys, quiet_exchange_log

        with quiet_exchange_log():
            reports = asyncio.run(check_keys(settings))
        for report in reports:
            click.echo(report.line(), err=bool(report.problem))
        failed = [r for r in reports if r.problem]
        if failed:
            raise click.exceptions.Exit(failed[0].code)
    click.echo("configuration OK")


@click.command("run")
@CONFIG_OPTION
@click.option("--dry-run", is_flag=True, help="Decide and audit, but send nothing.")
def run(config_path: Path | None, dry_run: bool) -> None:
    """Guard the configured accounts until SIGINT/SIGTERM."""
    from guardbot.daemon import StartupError, run_daemon
    from guardbot.logs import FORMAT_ENV, LEVEL_ENV, setup_logging
    from guardbot.preflight import DatabaseNotReady, check_database_free, prepare_database

    settings = _load(config_path)
    # The config's [log] section, unless --log-level/--log-format (or their env) said otherwise.
    setup_logging(os.environ.get(LEVEL_ENV, settings.log.level),
                  os.environ.get(FORMAT_ENV, settings.log.format))
    _warn_if_readable(config_path)
    if dry_run:
        settings = settings.model_copy(
            update={"guard": settings.guard.model_copy(update={"dry_run": True})}
        )
    try:
        check_database_free(settings.audit.url)  # a second guard: name the first one
        _checked(settings)  # before the database is touched
        prepare_database(settings.audit.url)
        asyncio.run(run_daemon(settings))
    except DatabaseNotReady as exc:
        raise CommandError(str(exc), exits.DATABASE) from None
    except StartupError as exc:
        raise CommandError(str(exc), exc.code) from None


@click.command("demo")
@click.option("--duration", type=click.FloatRange(min=1), default=20.0, show_default=True,
              help="Most seconds of wall-clock time to run; it ends sooner once the"
              " scenario is over and the guard has settled.")
@click.option("--speed", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Simulated seconds per wall-clock second.")
@click.option("--scenario", default="fastcrash", show_default=True,
              help="Mark-price scenario: calm, trend, crash, fastcrash, squeeze or csv:PATH.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True,
              help="Folder for the audit log (SQLite) and the summary.")
@click.option("--json", "as_json", is_flag=True,
              help="No live table; print the summary as one JSON object.")
def demo(duration: float, speed: float, scenario: str, seed: int, output: Path,
         as_json: bool) -> None:
    """Run the whole guard against the built-in simulated exchange: no keys, no network."""
    from guardbot.demo import DemoOptions, run_demo
    from guardbot.logs import FORMAT_ENV, LEVEL_ENV, setup_logging

    if LEVEL_ENV not in os.environ:
        # The live table shows the guard's decisions and the liquidations; log lines would
        # scroll it away.
        handler = setup_logging("ERROR", os.environ.get(FORMAT_ENV, "text"))
        handler.setLevel(logging.ERROR)
    options = DemoOptions(duration_s=duration, speed=speed, scenario=scenario, seed=seed,
                          output=output, display="none" if as_json
                          else "screen" if sys.stdout.isatty() else "lines")
    from guardbot.daemon import StartupError
    from guardbot.sim.prices import ScenarioError

    try:
        summary = asyncio.run(run_demo(options))
    except ScenarioError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None
    except StartupError as exc:
        raise CommandError(str(exc), exc.code) from None
    if as_json:
        click.echo(json.dumps(summary, default=_decimal_text))
    else:
        from guardbot.demo import render_summary

        click.echo(render_summary(summary))


def _decimal_text(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
