"""The shipped strategies, loaded the way the daemon loads them (``file:<name>``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import ALT_RULES, position

from guardbot.config import PolicySettings
from guardbot.policies.base import PositionView
from guardbot.policies.loader import load_policies

STRATEGIES = Path(__file__).resolve().parents[2] / "strategies"
def _strategy(use: str, **params: Any) -> Any:
    [loaded] = load_policies([PolicySettings(use=use, params=params)], STRATEGIES)
    return loaded.policy


def _view(**changes: Any) -> PositionView:
    return PositionView.of(position(**changes), ALT_RULES)


@pytest.fixture
def strategy() -> Callable[..., Any]:
    """Load a shipped strategy with params, as the daemon does (``file:<name>``)."""
    return _strategy


@pytest.fixture
def view() -> Callable[..., PositionView]:
    """A view of the long with fields replaced."""
    return _view
