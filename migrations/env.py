"""Alembic environment for the audit schema.

``guardbot db upgrade`` passes its own connection (``config.attributes["connection"]``);
the plain ``alembic`` command uses ``sqlalchemy.url`` from alembic.ini or GUARDBOT__AUDIT__URL.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from guardbot.audit.database import create_audit_engine
from guardbot.audit.tables import Base

config = context.config


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; connect to the database")

given = config.attributes.get("connection")
if given is not None:
    _migrate(given)
else:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("GUARDBOT__AUDIT__URL")
    if not url:
        raise SystemExit("set sqlalchemy.url in alembic.ini or GUARDBOT__AUDIT__URL")
    engine = create_audit_engine(url)
    with engine.begin() as connection:
        _migrate(connection)
    engine.dispose()
