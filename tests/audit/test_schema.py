"""Alembic migrations build the models' schema on SQLite and PostgreSQL, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from guardbot.audit import schema
from guardbot.audit.database import create_audit_engine
from guardbot.audit.errors import MigrationsNotFound, SchemaOutOfDate
from guardbot.audit.tables import Base

TABLES = {"runs", "run_ends", "actions", "action_events", "action_outcomes", "observations",
          "operator_commands"}


def tables(url: str) -> set[str]:
    engine = create_audit_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    engine = create_audit_engine(empty_url)
    assert schema.current(engine) is None
    with pytest.raises(SchemaOutOfDate, match="guardbot db upgrade"):
        schema.check_schema(engine)

    schema.upgrade(empty_url)
    assert tables(empty_url) == TABLES
    assert schema.current(engine) == schema.HEAD
    schema.check_schema(engine)

    schema.downgrade(empty_url, "base")
    assert tables(empty_url) == set()
    assert schema.current(engine) is None

    schema.upgrade(empty_url)
    assert tables(empty_url) == TABLES
    engine.dispose()


def test_autogenerate_finds_no_difference(url: str) -> None:
    engine = create_audit_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_head_constant_is_the_newest_migration() -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.migrations_dir()))
    assert ScriptDirectory.from_config(config).get_current_head() == schema.HEAD


def test_migrations_are_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(schema.MIGRATIONS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    found = schema.migrations_dir()
    assert (found / "env.py").is_file()
    assert found == Path(__file__).resolve().parents[2] / "migrations"


def test_missing_migrations_folder_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(schema.MIGRATIONS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MigrationsNotFound, match="GUARDBOT_MIGRATIONS") as caught:
        schema.migrations_dir()
    assert str(tmp_path / "nowhere") in str(caught.value)
    monkeypatch.delenv(schema.MIGRATIONS_ENV)
    with pytest.raises(MigrationsNotFound):
        schema.migrations_dir(tmp_path)
