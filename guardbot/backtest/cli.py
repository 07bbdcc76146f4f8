"""``guardbot backtest``: what-if runs of your own config on price paths, in virtual time.

    guardbot backtest --config guardbot.toml --book demo --path crash --speed 1 --speed 3
    guardbot backtest --config guardbot.toml --book status.json --path random --json
    guardbot backtest --config guardbot.toml --param topup.trigger=0.03,0.05 --lost 0.3

A problem (a bad config, book, path or ``--param``) is one line on stderr and exit code 2;
nothing connects anywhere and no secret is read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import click

from guardbot.backtest.paths import SHAPES, PathError, load_path, path_names
from guardbot.backtest.portfolio import BookError, load_book
from guardbot.backtest.variants import VariantError, parse_param, variants
from guardbot.config import ConfigError, load_config

log = logging.getLogger(__name__)
EXIT_INPUT = 2


class InputError(click.ClickException):
    """Bad input: one line on stderr, exit code 2."""

    exit_code = EXIT_INPUT


def _fail(message: str) -> InputError:
    return InputError("; ".join(line for line in message.splitlines() if line))


@click.command("backtest")
@click.option("--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Your guard config: its policies, budgets and polling are what run.")
@click.option("--book", default="demo", show_default=True,
              help="demo, or a .toml/.csv book, or the JSON of `guardbot status --json`.")
@click.option("--path", "paths", multiple=True,
              help=f"Price path (repeatable): {', '.join(path_names())}. Default: every shape.")
@click.option("--speed", "speeds", multiple=True, type=click.FloatRange(min=0, min_open=True),
              help="How fast a path moves (repeatable; default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one row per position.")
@click.option("--chart", "chart_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write one HTML chart per scenario into this folder.")
@click.option("--param", "params", multiple=True, metavar="KEY=V1,V2",
              help="Compare values of a policy or budget key (repeatable).")
@click.option("--lost", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Fraction of position_margin answers lost (the change is applied).")
@click.option("--feed-delay-ms", type=click.IntRange(min=0), default=100, show_default=True,
              help="From an exchange change to the guard seeing it.")
@click.option("--round-trip-ms", type=click.IntRange(min=0), default=100, show_default=True,
              help="Round trip of POST /v1/position_margin.")
@click.option("--seed", type=int, default=7, show_default=True)
def backtest(config_path: Path, book: str, paths: Sequence[str], speeds: Sequence[float],
             as_json: bool, as_csv: bool, chart_dir: Path | None, params: Sequence[str],
             lost: float, feed_delay_ms: int, round_trip_ms: int, seed: int) -> None:
    """Run your config on price paths against the simulated exchange, in virtual time, next
    to an unguarded twin, and compare both with the oracle's one top-up."""
    from guardbot.backtest import report
    from guardbot.backtest.chart import write_charts
    from guardbot.backtest.runner import RunOptions, run_scenarios
    from guardbot.backtest.venue import VenueParams
    from guardbot.daemon import load_policies

    if as_json and as_csv:
        raise _fail("give --json or --csv, not both")
    _quiet_logs()
    try:
        settings = load_config(config_path)
        chosen = variants(settings, [parse_param(p) for p in params])
        runs = [(label, changed, load_policies(changed)) for label, changed in chosen]
        the_book = load_book(book)
        the_paths = [load_path(name, speed, seed) for name in (paths or list(SHAPES))
                     for speed in (speeds or (1.0,))]  # fmt: skip
    except (ConfigError, BookError, PathError, VariantError) as exc:
        raise _fail(str(exc)) from None
    options = RunOptions(VenueParams(feed_delay_ms, round_trip_ms, lost, seed),
                         samples=chart_dir is not None)
    results = []
    try:
        for label, changed, policies in runs:
            results.append((label, run_scenarios(the_book, the_paths, changed, policies,
                                                 options)))
    except BookError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # a bug: one line, the details at DEBUG
        log.debug("backtest failed", exc_info=exc)
        raise click.ClickException(f"the backtest failed: {type(exc).__name__}: {exc} "
                                   "(--log-level DEBUG shows where)") from None
    if chart_dir is not None:
        for label, scenarios in results:
            folder = chart_dir if len(results) == 1 else chart_dir / _folder(label)
            for written in write_charts(scenarios, folder):
                click.echo(f"chart: {written}", err=True)
    if params:
        click.echo(report.trade_off_json(results) if as_json else report.trade_off(results))
        return
    scenarios = results[0][1]
    if as_json:
        click.echo(report.as_json(scenarios))
    elif as_csv:
        click.echo(report.as_csv(scenarios), nl=False)
    else:
        click.echo(report.text(scenarios))


def _folder(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def _quiet_logs() -> None:
    """The simulator logs every liquidation and the guard every action: in a backtest those
    are the results, printed at the end, unless a log level was asked for. The levels come
    back when the command ends (it may run inside a longer-lived process)."""
    from guardbot.logs import LEVEL_ENV

    if LEVEL_ENV in os.environ:
        return
    loggers = [logging.getLogger(name) for name in ("guardbot", "apscheduler")]
    levels = [(logger, logger.level) for logger in loggers]

    def restore() -> None:
        for logger, level in levels:
            logger.setLevel(level)

    click.get_current_context().call_on_close(restore)
    for logger in loggers:
        logger.setLevel(logging.ERROR)
