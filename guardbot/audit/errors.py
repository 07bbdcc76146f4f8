"""Audit errors, named after what the caller must do.

AuditError
├── SchemaOutOfDate   the database is not at the code's schema: run `guardbot db upgrade`
├── AuditUnavailable  the database cannot answer now: do not act on what it would have said
├── NotRecorded       the record is not durable: do not perform what it describes
└── MigrationsNotFound  point GUARDBOT_MIGRATIONS at the migrations folder

``first_line`` is how a database error is told (logs, ``/readyz``, error messages): its first
line only, which never holds the statement or its parameters.
"""

from __future__ import annotations


class AuditError(Exception):
    """Base of every audit log error."""


class SchemaOutOfDate(AuditError):
    """The audit database schema is not the one this code needs. Run `guardbot db upgrade`."""


class AuditUnavailable(AuditError):
    """The audit database is unreachable and the answer needs it (budgets, start-up
    reconcile): treat the budget as exhausted and retry later."""


class NotRecorded(AuditError):
    """The local spool could not be written (disk full, I/O error): the record is not
    durable, so the action it describes must not be performed."""


class MigrationsNotFound(AuditError):
    """The Alembic ``migrations/`` folder is missing: set GUARDBOT_MIGRATIONS to its path."""


def first_line(exc: BaseException, *, named: bool = False) -> str:
    """The first line of an error's text (no SQL statement, no parameters), or its type's name
    when it has none; ``named`` puts the type's name in front."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if named else lines[0]
