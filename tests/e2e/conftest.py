"""End-to-end fixtures: migrated audit databases on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import PG_URL
from sqlalchemy import create_engine, text

from e2e.helpers import AuditReader
from guardbot.audit import schema


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A migrated PostgreSQL schema of this test's own (dropped afterwards)."""
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{name}"
    try:
        schema.upgrade(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture
def reader_for() -> Iterator[Callable[[str], AuditReader]]:
    readers: list[AuditReader] = []

    def make(url: str) -> AuditReader:
        readers.append(AuditReader(url))
        return readers[-1]

    yield make
    for reader in readers:
        reader.close()
