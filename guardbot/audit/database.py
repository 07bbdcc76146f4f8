"""Engines for the audit database and the few SQL functions that differ between backends.

SQLite gets WAL (the CLI reads while the daemon writes), a busy timeout, foreign keys, and
an exact decimal sum over its text-stored money, so every query returns the same figures on
both backends.
"""

from __future__ import annotations

import sqlite3
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
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


def create_audit_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` (``sqlite:///file.db`` or ``postgresql+psycopg://...``)."""
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
