"""Fixtures of the simulator's tests (``sim`` and ``sim_account`` are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from guardbot.sim.engine import Engine

from .helpers import new_engine


@pytest.fixture
def engine() -> Engine:
    return new_engine()
