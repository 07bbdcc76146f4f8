"""Positions for policy tests: an alt with flat rates (base_imr 0.10, base_mmr 0.05), so
liquidation prices are hand-computable: a long of 10 at mark 100 with cost 1000 and margin M
liquidates at (1000 - M) / 9.5; a short of -10 with cost -1000 at (1000 + M) / 10.5."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from factories import ACCOUNT, LONG, SHORT
from factories import ALT_RULES as RULES

from guardbot.policies.base import PositionView

# re-exported for the policy tests
__all__ = ["ACCOUNT", "LONG", "RULES", "SHORT", "ViewMaker", "view_of"]

ViewMaker = Callable[..., PositionView]


def view_of(side: str = "long", **changes: Any) -> PositionView:
    """A view of the long (or ``side="short"``) with fields replaced."""
    base = {"long": LONG, "short": SHORT}[side]
    return PositionView.of(replace(base, **changes), RULES)


@pytest.fixture
def make_view() -> ViewMaker:
    return view_of
