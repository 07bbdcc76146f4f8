"""``guardbot audit ...`` (read the audit log) and ``guardbot db ...`` (its schema).

Every command takes ``--db URL`` or ``--config FILE`` (``audit.url``; without either, the
defaults plus ``GUARDBOT__AUDIT__URL``). Bad arguments and unusable databases end with one
``Error: ...`` line and the shared exit codes (``guardbot.exits``: 2 bad usage or config, 6
the database), never a traceback. Only ``db upgrade`` creates a missing SQLite file.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from guardbot import exits
from guardbot.audit import postmortem, queries, report, schema, verification
from guardbot.audit.database import (
    BadDatabaseUrl,
    DatabaseMissing,
    create_audit_engine,
    redacted,
)
from guardbot.audit.errors import AuditError, first_line
from guardbot.config import ConfigError, load_config
from guardbot.exits import CommandError

F = TypeVar("F", bound=Callable[..., Any])

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class OneLineErrors(click.Group):
    """A group whose usage errors print one line, without the usage text."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            raise click.exceptions.Exit(exits.USAGE) from None
        except (ConfigError, BadDatabaseUrl) as exc:
            raise CommandError(str(exc), exits.USAGE) from None
        except (AuditError, DatabaseMissing) as exc:
            raise CommandError(str(exc).splitlines()[0], exits.DATABASE) from None
        except SQLAlchemyError as exc:
            raise CommandError(f"the audit database failed: {first_line(exc)}",
                               exits.DATABASE) from None


class TimeParam(click.ParamType[datetime, Any]):
    """An ISO 8601 time (``2026-11-22T10:00:00Z``), a date (UTC midnight) or an age such as
    ``90m``, ``24h``, ``7d`` (that long before now)."""

    name = "time"

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        age = _AGE.match(text)
        if age:
            try:
                return self._now() - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
            except OverflowError:
                self.fail(f"{text!r} reaches before year 1: give a shorter age or a date",
                          param, ctx)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is not a time: use ISO 8601 (2026-11-22T10:00:00Z), a date "
                "(2026-11-22) or an age such as 90m, 24h, 7d",
                param,
                ctx,
            )
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


TIME = TimeParam()


def database_options(function: F) -> F:
    function = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
        help="guardbot config file (its audit.url).",
    )(function)  # fmt: skip
    return click.option("--db", "db_url", metavar="URL", help="audit database URL.")(function)


def database_url(db_url: str | None, config_file: Path | None) -> str:
    if db_url and config_file:
        raise click.UsageError("give --db or --config, not both")
    if db_url:
        return db_url
    return load_config(config_file).audit.url


def open_database(db_url: str | None, config_file: Path | None) -> Engine:
    """An engine on an existing database whose schema is current (else one clear error)."""
    url = database_url(db_url, config_file)
    engine = create_audit_engine(url, must_exist=True)
    try:
        schema.check_schema(engine)
    except SQLAlchemyError as exc:
        raise CommandError(f"cannot read the audit database {redacted(url)}: {first_line(exc)}",
                           exits.DATABASE) from None
    return engine


# -- formatting ---------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "0") else text
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _cell(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return ""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def write_rows(rows: Iterable[dict[str, Any]], columns: Sequence[str], fmt: str,
               out: IO[str]) -> None:  # fmt: skip
    """Write ``rows`` as table, json (an array), jsonl or csv."""
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in columns])
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({name: _plain(row[name]) for name in columns}) + "\n")
    elif fmt == "json":
        data = [{name: _plain(row[name]) for name in columns} for row in rows]
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        cells = [[_cell(row[name]) for name in columns] for row in rows]
        cells = [[c if len(c) <= 48 else c[:45] + "..." for c in line] for line in cells]
        widths = [max([len(name)] + [len(line[i]) for line in cells])
                  for i, name in enumerate(columns)]  # fmt: skip
        for line in [list(columns), *cells]:
            out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
            out.write("\n")


# -- guardbot audit -----------------------------------------------------------------------


@click.group(cls=OneLineErrors)
def audit() -> None:
    """Query the audit log: what guardbot did, when, why, and whether it worked."""


def action_filters(function: F) -> F:
    for option in reversed([
        click.option("--account", metavar="A", help="account id (0x...)."),
        click.option("--symbol", metavar="S", help="e.g. PERP_ETH_USDC."),
        click.option("--policy", metavar="P", help="policy name."),
        click.option("--kind", type=click.Choice(["ADD", "REDUCE"], case_sensitive=False)),
        click.option("--status", type=click.Choice(
            ["INTENT", "SENT", "SUCCEEDED", "REJECTED", "UNCERTAIN", "RECONCILED",
             "VERIFIED", "SKIPPED", "FAILED", "DRY_RUN"], case_sensitive=False),
            help="the action's latest event."),
        click.option("--since", type=TIME, metavar="T", help="ISO time, date, or age (24h)."),
        click.option("--until", type=TIME, metavar="T", help="ISO time, date, or age."),
    ]):  # fmt: skip
        function = option(function)
    return function


def _check_span(since: datetime | None, until: datetime | None) -> None:
    if since and until and since >= until:
        raise click.BadParameter("--since must be before --until", param_hint="'--since'")


def _filter(engine: Engine, **options: Any) -> queries.ActionFilter:
    account = options["account"]
    if account is not None and not queries.account_known(engine, account):
        raise click.BadParameter(
            f"unknown account {account}: nothing is recorded for it", param_hint="'--account'"
        )
    _check_span(options["since"], options["until"])
    return queries.ActionFilter(
        account=account, symbol=options["symbol"], policy=options["policy"],
        kind=options["kind"] and options["kind"].upper(),
        status=options["status"] and options["status"].upper(),
        since=options["since"], until=options["until"],
    )  # fmt: skip


@audit.command("list")
@action_filters
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@database_options
def list_command(db_url: str | None, config_file: Path | None, limit: int, fmt: str,
                 **options: Any) -> None:  # fmt: skip
    """Actions, newest first."""
    engine = open_database(db_url, config_file)
    rows = queries.list_actions(engine, _filter(engine, **options), limit)
    write_rows(rows, queries.LIST_COLUMNS, fmt, sys.stdout)


SHOWN_CANDIDATES = 10  # of an ambiguous id prefix


@audit.command("show")
@click.argument("action_id")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@database_options
def show_command(db_url: str | None, config_file: Path | None, action_id: str,
                 fmt: str) -> None:  # fmt: skip
    """One action with its snapshot and every event (an unambiguous id prefix will do)."""
    engine = open_database(db_url, config_file)
    matches = queries.action_ids(engine, action_id, limit=SHOWN_CANDIDATES + 1)
    if not matches:
        raise click.BadParameter(f"no action has id {action_id!r}", param_hint="'ACTION_ID'")
    if len(matches) > 1:
        shown = ", ".join(matches[:SHOWN_CANDIDATES])
        more = ", ..." if len(matches) > SHOWN_CANDIDATES else ""
        raise click.BadParameter(
            f"several actions have ids starting {action_id!r}: {shown}{more}; give more of it",
            param_hint="'ACTION_ID'")
    detail = queries.show_action(engine, matches[0])
    if fmt == "json":
        data = {"action": _plain(detail.action), "events": [_plain(e) for e in detail.events]}
        click.echo(json.dumps(data, indent=2))
        return
    for name, value in detail.action.items():
        click.echo(f"{name:>18}: {_cell(value)}")
    click.echo("")
    columns = ("seq", "time", "kind", "code", "message", "latency_ms", "detail")
    write_rows(detail.events, columns, "table", sys.stdout)


SUMMARY_COLUMNS = ("key", "actions", "added", "reduced", "failures", "uncertain",
                   "latency_mean_ms", "latency_p99_ms", "dry_run_added",
                   "dry_run_reduced")  # fmt: skip


@audit.command("summary")
@click.option("--since", type=TIME, metavar="T", help="ISO time, date, or age (24h).")
@click.option("--until", type=TIME, metavar="T", help="ISO time, date, or age (exclusive).")
@click.option("--by", type=click.Choice(queries.GROUP_BY), default="account",
              show_default=True)  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@database_options
def summary_command(db_url: str | None, config_file: Path | None, since: datetime | None,
                    until: datetime | None, by: queries.GroupBy, fmt: str) -> None:  # fmt: skip
    """Counts, margin added and reduced, failures, uncertain outcomes, latency."""
    _check_span(since, until)
    engine = open_database(db_url, config_file)
    rows = [
        {name: _rounded(getattr(row, name)) for name in SUMMARY_COLUMNS}
        for row in queries.summarize(engine, since, by, until)
    ]
    columns = (by, *SUMMARY_COLUMNS[1:])
    write_rows([{by: row["key"], **row} for row in rows], columns, fmt, sys.stdout)


def _rounded(value: Any) -> Any:
    return round(value, 1) if isinstance(value, float) else value


@audit.command("export")
@action_filters
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), required=True)
@click.option("--output", type=click.File("w"), default="-", help="file (default stdout).")
@database_options
def export_command(db_url: str | None, config_file: Path | None, fmt: str, output: IO[str],
                   **options: Any) -> None:  # fmt: skip
    """Every action with its snapshot and status, oldest first (spreadsheets, pipelines)."""
    engine = open_database(db_url, config_file)
    rows = queries.export_actions(engine, _filter(engine, **options))
    write_rows(rows, (*queries.LIST_COLUMNS, *queries.SNAPSHOT_COLUMNS), fmt, output)


@audit.command("verify")
@click.option("--account", metavar="A", help="check only this account.")
@database_options
def verify_command(db_url: str | None, config_file: Path | None, account: str | None) -> None:
    """Check every account's hash chain; name the first broken link."""
    engine = open_database(db_url, config_file)
    if account is not None and not queries.account_known(engine, account):
        raise click.BadParameter(f"unknown account {account}", param_hint="'--account'")
    result = verification.verify_chains(engine, account)
    if result.intact:
        click.echo(f"OK: {result.events} events in {result.accounts} accounts; chains intact")
        return
    for problem in result.breaks:
        click.echo(f"BROKEN: {problem}")
    raise click.exceptions.Exit(1)


@audit.command("report")
@click.option("--since", type=TIME, metavar="T", default="24h", show_default=True,
              help="ISO time, date, or age (24h).")
@click.option("--until", type=TIME, metavar="T", help="ISO time, date, or age (default: now).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="the page to write (one self-contained file).")
@database_options
def report_command(db_url: str | None, config_file: Path | None, since: datetime,
                   until: datetime | None, html_path: Path) -> None:  # fmt: skip
    """One self-contained HTML page of a period for an auditor: summary, actions, a chart
    per position. Opens offline (from an email attachment too)."""
    now = datetime.now(UTC)
    until = until or now
    _check_span(since, until)
    names = {}
    if config_file is not None and not db_url:
        names = {a.account_id: a.name for a in load_config(config_file).accounts}
    url = database_url(db_url, config_file)
    engine = open_database(db_url, config_file)
    data = report.gather(engine, since, until)
    page = report.render(data, names, generated=now, source=redacted(url))
    try:
        html_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {html_path}: {exc.strerror}", exits.USAGE) from None
    click.echo(f"wrote {html_path}: {len(data.actions)} actions, {len(data.positions)} "
               "positions")


@audit.command("why")
@click.option("--account", metavar="A", help="account id (0x...).")
@click.option("--symbol", metavar="S", help="e.g. PERP_ETH_USDC.")
@click.option("--since", type=TIME, metavar="T", default="7d", show_default=True,
              help="ISO time, date, or age (24h).")
@click.option("--until", type=TIME, metavar="T", help="ISO time, date, or age.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@database_options
def why_command(db_url: str | None, config_file: Path | None, account: str | None,
                symbol: str | None, since: datetime | None, until: datetime | None,
                fmt: str) -> None:  # fmt: skip
    """Why did a guarded position die? Each liquidation with the guard's last decisions."""
    engine = open_database(db_url, config_file)
    found = postmortem.deaths(engine, since=since, until=until, account=account,
                              symbol=symbol)
    if fmt == "json":
        click.echo(json.dumps([d.as_dict() for d in found], indent=2))
        return
    if not found:
        click.echo("no guarded position was liquidated in that window")
        return
    for death in found:
        _echo_death(death)


def _echo_death(death: postmortem.Death) -> None:
    detail = death.detail
    click.echo(f"{_cell(death.time)}  {death.account_id} {death.symbol}: liquidated at "
               f"{detail.get('transfer_price', '?')} "
               f"(liquidation {detail.get('liquidation_id', '?')})")
    click.echo(f"  why: {death.verdict}")
    seen = [f"{label} {_shown(name, detail[name])}" for name, label in (
        ("last_margin", "margin"), ("last_mark", "mark"),
        ("last_liquidation_price", "liquidation price"), ("last_distance", "distance"))
        if name in detail]  # fmt: skip
    if seen:
        click.echo(f"  last seen: {', '.join(seen)}")
    click.echo("  the guard's last decisions" + ("" if death.guard_last else
                                                  ": none since it started"))
    for note in death.guard_last:
        when = _cell(_from_ms(note.get("at_ms")))
        times = f" (x{note['times']}, last {_cell(_from_ms(note.get('last_ms')))})" \
            if "times" in note else ""
        click.echo(f"    {when}  {note.get('what', '')}{times}")
    click.echo(f"  actions on the position in the audit log: {len(death.actions)}")
    if death.actions:
        write_rows(death.actions, ("time", "id", "kind", "amount", "status", "dry_run",
                                   "reason"), "table", sys.stdout)
    click.echo("")


def _shown(name: str, raw: str) -> str:
    """A recorded figure for reading: the distance as a percentage, a computed price to the
    cent (the record keeps every digit)."""
    try:
        value = Decimal(raw)
    except ArithmeticError:
        return raw
    if name == "last_distance":
        return f"{value:.2%}"
    if name == "last_liquidation_price":
        return f"{value:.2f}"
    return raw


def _from_ms(raw: str | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(raw) / 1000, UTC) if raw else None
    except (ValueError, OverflowError, OSError):
        return None


# -- guardbot db --------------------------------------------------------------------------


@click.group(cls=OneLineErrors)
def db() -> None:
    """The audit database schema (Alembic)."""


def _migrations_option(function: F) -> F:
    return click.option(
        "--migrations", type=click.Path(file_okay=False, path_type=Path),
        help=f"the migrations folder (default: found automatically, or ${schema.MIGRATIONS_ENV}).",
    )(function)  # fmt: skip


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@_migrations_option
@database_options
def upgrade_command(db_url: str | None, config_file: Path | None, revision: str,
                    migrations: Path | None) -> None:  # fmt: skip
    """Migrate the audit database up (to the newest schema by default)."""
    url = database_url(db_url, config_file)
    schema.upgrade(url, revision, migrations)
    click.echo(f"{redacted(url)} is at revision {_current(url)}")


@db.command("downgrade")
@click.argument("revision")
@_migrations_option
@database_options
def downgrade_command(db_url: str | None, config_file: Path | None, revision: str,
                      migrations: Path | None) -> None:  # fmt: skip
    """Migrate the audit database down to REVISION (``base`` removes every table)."""
    url = database_url(db_url, config_file)
    create_audit_engine(url, must_exist=True).dispose()  # a missing file is not created
    schema.downgrade(url, revision, migrations)
    click.echo(f"{redacted(url)} is at revision {_current(url)}")


@db.command("current")
@database_options
def current_command(db_url: str | None, config_file: Path | None) -> None:
    """Show the database's schema revision."""
    url = database_url(db_url, config_file)
    revision = _current(url)
    state = (
        "up to date" if revision == schema.HEAD else f"needs `guardbot db upgrade` to {schema.HEAD}"
    )
    click.echo(f"{revision} ({state})")


def _current(url: str) -> str:
    engine = create_audit_engine(url, must_exist=True)
    try:
        return schema.current(engine) or "(empty)"
    finally:
        engine.dispose()
