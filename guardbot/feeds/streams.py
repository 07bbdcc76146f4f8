"""The WebSocket half of the feeds: private ``position``/``balance`` pushes and public mark
prices, consumed from the ``Exchange`` port and handed on as they arrive.

A ``StreamGap`` means pushes may have been missed: the account is resynchronised over REST
*before* the gap is passed on, so nothing downstream trusts pushes across a hole
(docs/exchange.md §6, "always re-fetch the REST snapshot after reconnecting").

The first connect and a reconnect whose resync worked are routine (INFO); a gap the REST
resync could not cover, or a stream that ended or failed, is a WARNING. A refused key (a
failed private login) is reported (``guardbot.feeds.KeyReport``) and retried with back-off:
it never stops the other stream, nor any other account's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from guardbot.backoff import delay
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.exchange.errors import AuthError, ExchangeError
from guardbot.exchange.port import Exchange, StreamEvent, StreamGap
from guardbot.feeds import KeyReport, auth_retry_delay
from guardbot.logs import log_context

log = logging.getLogger(__name__)

EventHandler = Callable[[str, StreamEvent], Awaitable[None]]
Resync = Callable[[str], Awaitable[object]]

# The port's iterators reconnect on their own; these delays apply only when one ends or
# fails outright, growing so a dead endpoint is not hammered.
RESTART_BASE_S = 0.5
RESTART_CAP_S = 10.0
# The reason of the gap ``exchange.ws`` yields after its first connect.
FIRST_CONNECT = "connected"


def restart_delay(failures: int) -> float:
    """Seconds to wait before re-opening a stream after ``failures`` consecutive ends."""
    return delay(failures - 1, RESTART_BASE_S, RESTART_CAP_S) if failures else 0.0


class Streams:
    """Consumes one account's private and public event streams until cancelled.

    ``on_event(account_id, event)`` gets every push; ``resync(account_id)`` is awaited on a
    ``StreamGap`` (the poller's ``poll_now``, ``None`` when it failed) before the gap itself
    is handed on. ``on_key`` hears of refused keys (without it they are logged). The
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
        on_key: KeyReport | None = None,
    ) -> None:
        self._exchange = exchange
        self._on_event = on_event
        self._resync = resync
        self._public = public
        self._clock = clock
        self._on_key = on_key

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
        failures = refusals = 0
        while True:
            try:
                async for event in self._named(name, open_stream()):
                    failures = 0
                    if refusals:
                        refusals = 0
                        self._report(account_id, name, None)
                    if isinstance(event, StreamGap):
                        await self._gap(account_id, event)
                    await self._on_event(account_id, event)
            except AuthError as exc:
                # Retrying at once cannot fix a key; the operator may register it.
                refusals += 1
                self._report(account_id, name, exc)
                await self._clock.sleep(auth_retry_delay(refusals))
                continue  # the next login's gap resynchronises
            except ExchangeError as exc:
                log.warning("%s stream of %s failed: %s", name, account_id, exc)
            # The iterator ended or failed: whatever it missed must come from REST.
            failures += 1
            await self._clock.sleep(restart_delay(failures))
            await self._gap(account_id, StreamGap(stream=name, reason="stream restarted"),
                            routine=False)

    async def _named(self, name: str, events: AsyncIterator[StreamEvent]
                     ) -> AsyncIterator[StreamEvent]:  # fmt: skip
        """``events``, with the exchange client's own lines about a private stream (connects,
        reconnects, refusals) naming the account; what the consumer does with each event is
        outside that context (a mark push re-evaluates every account)."""
        if name != "private":
            async for event in events:
                yield event
            return
        iterator = aiter(events)
        while True:
            with log_context(account=self._exchange.account_id):
                try:
                    event = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield event

    def _report(self, account_id: str, name: str, error: AuthError | None) -> None:
        if self._on_key is not None:
            self._on_key(account_id, name, error)
        elif error is not None:
            log.error("%s stream of %s: %s; retrying", name, account_id, error)

    async def _gap(self, account_id: str, gap: StreamGap, *, routine: bool = True) -> None:
        """Resynchronise over REST; a routine (re)connect is INFO, a gap REST could not
        cover (or a stream that ended) a WARNING."""
        covered = await self._resync(account_id) is not None
        if routine and covered:
            what = ("connected" if gap.reason == FIRST_CONNECT else gap.reason
                    if gap.reason.startswith("reconnected") else f"reconnected ({gap.reason})")
            log.info("%s stream of %s %s: account read over REST", gap.stream, account_id,
                     what)
        else:
            log.warning("%s stream gap for %s (%s): pushes may have been missed%s", gap.stream,
                        account_id, gap.reason,
                        "" if covered else "; the REST resync failed, the poller keeps trying")
