"""What ``guardbot run`` checks before it trades, in one place: ``check-config`` runs the
same checks without trading, ``status`` the ones about accounts.

- ``check_settings``: at least one account, every secret well-formed and belonging to its
  key (config.py checked the URL schemes when it loaded), the policies, the health
  port free, and the live page's token readable (required beyond loopback). Every problem
  found is one line of one ``ConfigError``.
- ``check_database_free``, ``prepare_database``: the SQLite audit database not held by
  another guard (checked first: a second guard on the same config is told about the first
  one, not about the port it holds), and an empty one given its schema (an out-of-date one
  is refused, naming ``guardbot db upgrade``).
- ``check_keys``: ``check-config --online``: one signed read per account, reporting each
  key's scopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guardbot import exits
from guardbot.config import ConfigError, HealthSettings, Settings
from guardbot.policies.loader import LoadedPolicy, load_policies

# The scopes a guarded account's key needs (docs/exchange.md §2.1).
NEEDED_SCOPES = frozenset({"read", "trading"})


def check_accounts(settings: Settings) -> None:
    """At least one account, and every secret resolvable, well-formed and belonging to its
    key. Raises ``ConfigError`` with one line per problem."""
    if not settings.accounts:
        raise ConfigError("no [[accounts]] configured: nothing to guard")
    problems = []
    for account in settings.accounts:
        try:
            account.check_secret()
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))


def port_problem(health: HealthSettings) -> str | None:
    """Why the health server could not listen where configured, or ``None``."""
    if not health.enabled or health.port == 0:
        return None
    probe = socket.socket(socket.AF_INET6 if ":" in health.host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        probe.bind((health.host, health.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"health.port: {health.host}:{health.port} is already in use (another"
                    " guardbot, or choose another [health] port)")
        return f"health.host: cannot listen on {health.host}:{health.port}: {exc.strerror}"
    finally:
        probe.close()
    return None


def view_problem(health: HealthSettings) -> str | None:
    """Why the live page cannot be served as configured (its token unreadable, or none
    while it listens beyond loopback), or ``None``."""
    if not health.enabled or not health.view:
        return None
    try:
        token = health.view_token()
    except ConfigError as exc:
        return str(exc)
    if token is None and not health.loopback:
        return (f"health.token: the live page /view listens on {health.host}, beyond loopback:"
                " set [health] token_file (or token, or GUARDBOT__HEALTH__TOKEN), or view ="
                " false")
    return None


def check_settings(settings: Settings) -> list[LoadedPolicy]:
    """Everything ``run`` checks before it trades; the loaded policies. Raises
    ``ConfigError`` listing every problem, one line each."""
    problems = []
    try:
        check_accounts(settings)
    except ConfigError as exc:
        problems.append(str(exc))
    policies: list[LoadedPolicy] = []
    try:
        policies = load_policies(settings.policies, settings.guard.strategies_dir)
    except ConfigError as exc:
        problems.append(str(exc))
    for problem in (port_problem(settings.health), view_problem(settings.health)):
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))
    return policies


class DatabaseNotReady(Exception):
    """The audit database cannot be used by ``run`` as it is; the message says why and
    what to do."""


def check_database_free(url: str) -> None:
    """Refuse, naming the holder, an SQLite database another guard holds; creates nothing
    (a database never locked has no lock file). Raises ``DatabaseNotReady``."""
    from guardbot.audit.database import DatabaseInUse, sqlite_file, sqlite_lock

    path = sqlite_file(url)
    if path is None or not Path(f"{path}.lock").is_file():
        return
    try:
        with sqlite_lock(url):
            pass
    except DatabaseInUse as exc:
        raise DatabaseNotReady(str(exc)) from None
    except OSError:
        return  # an unreadable lock file: prepare_database reports it


def prepare_database(url: str) -> None:
    """Before ``run``: refuse an SQLite database another guard holds, and give an empty
    SQLite database its schema (Alembic upgrade to head) while holding its lock. Raises
    ``DatabaseNotReady``; any other schema problem is for the start-up check to report."""
    from sqlalchemy.exc import SQLAlchemyError

    from guardbot.audit import schema
    from guardbot.audit.database import (
        DatabaseInUse,
        create_audit_engine,
        is_empty,
        sqlite_file,
        sqlite_lock,
    )
    from guardbot.audit.errors import AuditError, first_line

    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise DatabaseNotReady(f"the folder of the audit database {path} does not exist:"
                               " create it, or fix audit.url")
    try:
        with sqlite_lock(url) as locked:
            if not locked:
                return  # PostgreSQL: its schema is the operator's (`guardbot db upgrade`)
            engine = create_audit_engine(url)
            try:
                empty = is_empty(engine)
            finally:
                engine.dispose()
            if empty:
                schema.upgrade(url)
    except DatabaseInUse as exc:
        raise DatabaseNotReady(str(exc)) from None
    except (AuditError, SQLAlchemyError, OSError) as exc:
        raise DatabaseNotReady(f"cannot prepare the audit database: {first_line(exc)}") from None


@dataclass(frozen=True)
class KeyReport:
    """What ``check-config --online`` learned about one account's key."""

    where: str
    orderly_key: str
    scopes: frozenset[str] = frozenset()
    problem: str = ""
    code: int = exits.OK

    def line(self) -> str:
        if self.problem:
            return f"{self.where}: key {self.orderly_key}: {self.problem}"
        return f"{self.where}: key {self.orderly_key}: scopes {','.join(sorted(self.scopes))}: OK"


async def check_key(settings: Settings, index: int) -> KeyReport:
    """Sign one read (``GET /v1/client/key_info``) with account ``index``'s key."""
    from guardbot.exchange.client import OrderlyExchange
    from guardbot.exchange.errors import AuthError, ExchangeError, RetryLater

    account = settings.accounts[index]
    report = KeyReport(account.where, account.orderly_key)
    try:
        async with OrderlyExchange.from_settings(
            account, settings.exchange, max_attempts=1
        ) as exchange:
            scopes = await exchange.get_key_scopes()
    except AuthError as exc:
        return _problem(report, f"the exchange refused the key: {exc}", exits.AUTH)
    except RetryLater as exc:
        return _problem(report, f"exchange unreachable: {exc}", exits.UNREACHABLE)
    except ExchangeError as exc:
        return _problem(report, f"exchange error: {exc}", exits.EXCHANGE)
    missing = NEEDED_SCOPES - scopes
    if missing:
        return KeyReport(report.where, report.orderly_key, scopes,
                         f"scopes {','.join(sorted(scopes)) or 'none'}: lacks "
                         f"{','.join(sorted(missing))}, which the guard needs", exits.AUTH)
    return KeyReport(report.where, report.orderly_key, scopes)


def _problem(report: KeyReport, problem: str, code: int) -> KeyReport:
    return KeyReport(report.where, report.orderly_key, problem=problem, code=code)


async def check_keys(settings: Settings) -> list[KeyReport]:
    """``check_key`` for every account, at once."""
    return list(await asyncio.gather(
        *(check_key(settings, i) for i in range(len(settings.accounts)))))


@contextlib.contextmanager
def quiet_exchange_log() -> Iterator[None]:
    """For one-shot commands that report each account's failure in a line of their own: the
    exchange client's warnings (and its retries') would only repeat it. DEBUG keeps them."""
    exchange_log = logging.getLogger("guardbot.exchange")
    level = exchange_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        exchange_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        exchange_log.setLevel(level)
