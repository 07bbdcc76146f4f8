"""Engines for the audit database and the few SQL functions that differ between backends.

SQLite gets WAL (the CLI reads while the daemon writes), a busy timeout, foreign keys, and
an exact decimal sum over its text-stored money, so every query returns the same figures on
both backends. An SQLite database has one guard: ``SqliteLock``, an exclusive ``flock`` on
``<database>.lock`` that names its holder. Read-only callers open it with ``must_exist``,
so a mistyped path is reported instead of created.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Date

from guardbot.audit.tables import Money


class BadDatabaseUrl(ValueError):
    """The audit database URL cannot be used: fix ``--db`` or ``audit.url``."""


def redacted(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


class DatabaseMissing(Exception):
    """The SQLite audit database file does not exist (and the caller only reads)."""


class DatabaseInUse(Exception):
    """Another process holds this SQLite audit database: only one guard may use it."""


def sqlite_file(url: str) -> Path | None:
    """The file of an ``sqlite:///FILE`` URL; ``None`` for other backends and memory."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database.removeprefix("file:").split("?")[0])


def create_audit_engine(url: str, *, must_exist: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///file.db`` or ``postgresql+psycopg://...``).
    ``must_exist``: raise ``DatabaseMissing`` rather than create a missing SQLite file."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadDatabaseUrl(f"not a database URL: {url!r}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BadDatabaseUrl(
            f"unsupported audit database {redacted(url)}: use sqlite:///FILE or "
            "postgresql+psycopg://USER@HOST/DB"
        )
    path = sqlite_file(url)
    if must_exist and path is not None and not path.is_file():
        raise DatabaseMissing(
            f"the audit database {path} does not exist (check --db or audit.url; "
            "`guardbot run` creates it)"
        )
    if backend == "sqlite":
        # The background writer runs in a worker thread.
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
    else:
        kwargs.setdefault("pool_pre_ping", True)
        # An unreachable server must fail fast: the writer retries, records wait in the spool.
        kwargs.setdefault("connect_args", {"connect_timeout": 10})
    engine = create_engine(parsed, **kwargs)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_setup)
    return engine


def is_empty(engine: Engine) -> bool:
    """Whether the database has no tables at all (a new file, a new schema)."""
    with engine.connect() as connection:
        return not inspect(connection).get_table_names()


class SqliteLock:
    """An exclusive ``flock`` on ``<database>.lock``, held until ``close`` (or the process
    ends). The file says who holds it (process id, host, since when), so a second guard can
    be told which process to stop. Raises ``DatabaseInUse``."""

    def __init__(self, database: Path) -> None:
        self.path = Path(f"{database}.lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            os.close(self._fd)
            raise DatabaseInUse(
                f"another guardbot instance already uses {database}{holder}; with SQLite only"
                " one instance may run (stop it, or use PostgreSQL to run several)"
            ) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n"
                  .encode(), 0)  # fmt: skip

    def _holder(self) -> str:
        try:
            text = os.pread(self._fd, 200, 0).decode(errors="replace").strip()
        except OSError:
            return ""
        return f" ({text})" if text else ""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[bool]:
    """Hold the ``SqliteLock`` of an SQLite ``url`` for the block (``True``); other
    databases need none (``False``)."""
    path = sqlite_file(url)
    if path is None:
        yield False
        return
    lock = SqliteLock(path)
    try:
        yield True
    finally:
        lock.close()


def _sqlite_setup(connection: sqlite3.Connection, _record: Any) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=FULL")
    connection.create_aggregate("guardbot_decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]


class _DecimalSum:
    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = (self.total or Decimal(0)) + Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


class money_sum(FunctionElement[Decimal]):
    """``SUM`` of a Money column, exact on both backends."""

    type = Money()
    inherit_cache = True


@compiles(money_sum)
def _money_sum(element: money_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(money_sum, "sqlite")
def _money_sum_sqlite(element: money_sum, compiler: SQLCompiler, **kw: Any) -> str:
    return f"guardbot_decimal_sum({compiler.process(element.clauses, **kw)})"


class utc_day(FunctionElement[date]):
    """The UTC calendar day of a timestamp."""

    type = Date()
    inherit_cache = True


@compiles(utc_day)
def _utc_day(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC' AS DATE)"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # Stored as naive UTC text: 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"date({compiler.process(element.clauses, **kw)})"
