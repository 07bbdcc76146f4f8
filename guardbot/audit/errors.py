"""Audit errors, named after what the caller must do.

AuditError
├── SchemaOutOfDate   the database is not at the code's schema: run `guardbot db upgrade`
├── AuditUnavailable  the database cannot answer now: do not act on what it would have said
├── NotRecorded       the record is not durable: do not perform what it describes
└── MigrationsNotFound  point GUARDBOT_MIGRATIONS at the migrations folder
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
