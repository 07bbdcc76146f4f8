"""Backtest fixtures: the default config as ``guardbot sim --write-config`` writes it, and one
migrated audit database copied for every run."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from guardbot.backtest.runner import AuditTemplate, scratch_folder
from guardbot.config import Settings, parse_config
from guardbot.sim.cli import config_text


def written_config() -> Settings:
    """The config `guardbot sim --write-config` writes (topup and sweep with their
    defaults, default budgets and polling), without its accounts."""
    sim: Any = SimpleNamespace(rest_url="http://127.0.0.1:1",
                               public_ws_url="ws://127.0.0.1:1/ws/stream/{account_id}",
                               private_ws_url="ws://127.0.0.1:1/v2/ws/private/stream/{account_id}")
    return parse_config(tomllib.loads(config_text(sim, [])))


@pytest.fixture(scope="session")
def template() -> Iterator[AuditTemplate]:
    with scratch_folder() as folder:
        yield AuditTemplate(folder)
