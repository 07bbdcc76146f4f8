"""The fault suite: every test here is marked ``faults`` (``pytest -m faults`` or
``pytest tests/faults``), and the session ends with the table of fault runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import REPORT, migrate, report_table

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("fault runs: the exchange against the audit log")
        terminalreporter.write_line(report_table(REPORT))
        for row in REPORT:
            for note in row.notes:
                terminalreporter.write_line(f"{row.fault}: {note}")


@pytest.fixture
def audit_url(tmp_path: Path) -> str:
    """A migrated SQLite audit database of the test's own."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    migrate(url)
    return url
