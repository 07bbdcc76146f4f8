"""The audit schema's version: Alembic upgrade / downgrade / current, and the start-up check.

``migrations/`` sits at the repository top level. It is found, in order, from an explicit
argument, the ``GUARDBOT_MIGRATIONS`` environment variable, next to the installed package (a
source checkout or editable install) and the working directory (``pip install .`` run from a
copy of the repository, as the Dockerfile does).
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine

from guardbot.audit.database import create_audit_engine
from guardbot.audit.errors import MigrationsNotFound, SchemaOutOfDate

# The newest migration in migrations/versions; the daemon needs exactly this revision.
# tests/audit/test_schema.py checks it against the folder.
HEAD = "0003"
MIGRATIONS_ENV = "GUARDBOT_MIGRATIONS"


def migrations_dir(override: Path | str | None = None) -> Path:
    """The Alembic migrations folder. Raises ``MigrationsNotFound`` naming where it looked."""
    explicit = override or os.environ.get(MIGRATIONS_ENV)
    candidates = (
        [Path(explicit)]
        if explicit
        else [Path(__file__).resolve().parents[2] / "migrations", Path.cwd() / "migrations"]
    )
    for folder in candidates:
        if (folder / "env.py").is_file():
            return folder
    raise MigrationsNotFound(
        "Alembic migrations folder not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + f"); set {MIGRATIONS_ENV} to the repository's migrations/ folder"
    )


def alembic_config(connection: Connection, migrations: Path | str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir(migrations)))
    config.attributes["connection"] = connection
    return config


def upgrade(url: str, revision: str = "head", migrations: Path | str | None = None) -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    engine = create_audit_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection, migrations), revision)
    finally:
        engine.dispose()


def downgrade(url: str, revision: str, migrations: Path | str | None = None) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` drops everything)."""
    engine = create_audit_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection, migrations), revision)
    finally:
        engine.dispose()


def current(engine: Engine) -> str | None:
    """The database's revision, ``None`` for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema(engine: Engine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is exactly at ``HEAD``."""
    revision = current(engine)
    if revision != HEAD:
        found = "has no schema" if revision is None else f"is at revision {revision}"
        raise SchemaOutOfDate(
            f"the audit database {found}, this guardbot needs {HEAD}: run `guardbot db upgrade`"
        )
