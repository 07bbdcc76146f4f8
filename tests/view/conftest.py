"""View fixtures: a watched guard on the guard clock (``view.helpers``)."""

from __future__ import annotations

import pytest

from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from view.helpers import Watched, view_settings


@pytest.fixture
async def watched(timed_audit: AuditLog, guard_clock: ManualClock) -> Watched:
    return Watched(timed_audit, guard_clock, view_settings())
