"""A local fake of the Telegram Bot API (``fake_api.FakeBotApi``) per test, on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from guardbot.clock import ManualClock

from .fake_api import FakeBotApi, serve


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_ms=1_767_225_600_000)


@pytest.fixture
async def bot_api(clock: ManualClock) -> AsyncIterator[FakeBotApi]:
    async with serve(clock) as fake:
        yield fake
