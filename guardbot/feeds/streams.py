"""The WebSocket half of the feeds: private ``position``/``balance`` pushes and public mark
prices, consumed from the ``Exchange`` port and handed on as they arrive.

A ``StreamGap`` means pushes may have been missed: the account is resynchronised over REST
*before* the gap is passed on, so nothing downstream trusts pushes across a hole
(docs/exchange.md §6, "always re-fetch the REST snapshot after reconnecting").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from guardbot.backoff import delay
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.exchange.errors import AuthError, ExchangeError
from guardbot.exchange.port import Exchange, StreamEvent, StreamGap

log = logging.getLogger(__name__)

EventHandler = Callable[[str, StreamEvent], Awaitable[None]]
Resync = Callable[[str], Awaitable[object]]

# The port's iterators reconnect on their own; these delays apply only when one ends or
# fails outright, growing so a dead endpoint is not hammered.
RESTART_BASE_S = 0.5
RESTART_CAP_S = 10.0


def restart_delay(failures: int) -> float:
    """Seconds to wait before re-opening a stream after ``failures`` consecutive ends."""
    return delay(failures - 1, RESTART_BASE_S, RESTART_CAP_S) if failures else 0.0


class Streams:
    """Consumes one account's private and public event streams until cancelled.

    ``on_event(account_id, event)`` gets every push; ``resync(account_id)`` is awaited on a
    ``StreamGap`` (the poller's ``poll_now``) before the gap itself is handed on. The
    restart delays run on ``clock``.
    """

    def __init__(
        self,
        exchange: Exchange,
        on_event: EventHandler,
        resync: Resync,
        *,
        public: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._exchange = exchange
        self._on_event = on_event
        self._resync = resync
        self._public = public
        self._clock = clock

    async def run(self) -> None:
        """Run both streams until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._consume("private", self._exchange.private_events))
            if self._public:
                group.create_task(self._consume("public", self._exchange.public_events))

    async def _consume(
        self, name: str, open_stream: Callable[[], AsyncIterator[StreamEvent]]
    ) -> None:
        account_id = self._exchange.account_id
        failures = 0
        while True:
            try:
                async for event in open_stream():
                    failures = 0
                    if isinstance(event, StreamGap):
                        await self._gap(account_id, event)
                    await self._on_event(account_id, event)
            except AuthError:
                # A key problem will not fix itself: stop and tell the operator.
                raise
            except ExchangeError as exc:
                log.warning("%s stream of %s failed: %s", name, account_id, exc)
            # The iterator ended or failed: whatever it missed must come from REST.
            failures += 1
            await self._clock.sleep(restart_delay(failures))
            await self._gap(account_id, StreamGap(stream=name, reason="stream restarted"))

    async def _gap(self, account_id: str, gap: StreamGap) -> None:
        log.info("%s stream gap for %s (%s): resync over REST", gap.stream, account_id, gap.reason)
        await self._resync(account_id)
