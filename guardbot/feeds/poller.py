"""The REST baseline: an APScheduler (3.x, asyncio) job polls every guarded account's
positions (``GET /v1/positions``) and hands each snapshot on.

Polling is the source of truth the WebSocket pushes are merged into
(docs/architecture.md, "Data flow"): it runs on ``interval_s`` normally, on
``fast_interval_s`` for an account the guard marks urgent (a position near its trigger),
and on demand (``poll_now``) after a stream gap.
One job per account ticks at the fast interval and decides whether a poll is due, so an
account speeds up or slows down on its next tick without rescheduling anything.
An account whose key the exchange refuses is polled with back-off instead
(``guardbot.feeds.auth_retry_delay``), and is back on its interval once the key works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.domain import AccountSnapshot
from guardbot.exchange.errors import AuthError, ExchangeError
from guardbot.exchange.port import Exchange
from guardbot.feeds import KeyReport, auth_retry_delay
from guardbot.logs import log_context

log = logging.getLogger(__name__)

SnapshotHandler = Callable[[AccountSnapshot], Awaitable[None]]


class Poller:
    """Polls positions of every account; an async context manager owning its scheduler.

    ``on_snapshot`` receives every successful poll; ``is_urgent(account_id)`` selects the
    fast interval. A failed poll is logged and counted; the next tick tries again (the
    guard meanwhile refuses to act on the ageing data). A refused key goes to ``on_key``
    (without it, it is logged) and is retried with back-off.
    """

    def __init__(
        self,
        exchanges: Mapping[str, Exchange],
        on_snapshot: SnapshotHandler,
        *,
        interval_s: float,
        fast_interval_s: float,
        is_urgent: Callable[[str], bool] = lambda _account_id: False,
        clock: Clock = SYSTEM_CLOCK,
        on_key: KeyReport | None = None,
    ) -> None:
        self._exchanges = dict(exchanges)
        self._on_key = on_key
        self._refusals: dict[str, int] = {}  # refused keys in a row, per account
        self._on_snapshot = on_snapshot
        self._interval_s = interval_s
        self._fast_interval_s = min(fast_interval_s, interval_s)
        self._is_urgent = is_urgent
        self._clock = clock
        self._locks = {account_id: asyncio.Lock() for account_id in self._exchanges}
        self._last_poll: dict[str, float] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self.polls: dict[str, int] = dict.fromkeys(self._exchanges, 0)

    async def __aenter__(self) -> Poller:
        scheduler = AsyncIOScheduler()
        for account_id in self._exchanges:
            scheduler.add_job(
                self.tick,
                "interval",
                args=(account_id,),
                seconds=self._fast_interval_s,
                id=f"poll:{account_id}",
                # Our own lock keeps polls of one account serial; these stop APScheduler
                # from skipping or warning when a slow poll overlaps a tick.
                max_instances=3,
                coalesce=True,
                misfire_grace_time=None,
            )
        scheduler.start()
        self._scheduler = scheduler
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def due(self, account_id: str) -> bool:
        """Whether the account's next tick should poll."""
        last = self._last_poll.get(account_id)
        if last is None:
            return True
        interval = self._fast_interval_s if self._is_urgent(account_id) else self._interval_s
        if refusals := self._refusals.get(account_id):
            interval = max(interval, auth_retry_delay(refusals))
        # A little slack so a tick that fires a hair early still counts.
        return self._clock.monotonic() - last >= interval * 0.95

    async def tick(self, account_id: str) -> None:
        """One tick of the account's job (APScheduler's, or the backtest's): polls if due."""
        if self._locks[account_id].locked() or not self.due(account_id):
            return
        try:
            await self.poll_now(account_id)
        except asyncio.CancelledError:
            # Only APScheduler's shutdown cancels a job; it would log that as a job failure.
            log.debug("poll of %s cancelled by shutdown", account_id)

    async def poll_now(self, account_id: str) -> AccountSnapshot | None:
        """Poll one account immediately (start-up, after a stream gap, re-reads).

        Returns the snapshot, or ``None`` when the exchange call failed (already logged).
        """
        async with self._locks[account_id]:
            self._last_poll[account_id] = self._clock.monotonic()
            try:
                with log_context(account=account_id):  # the client's own lines name it too
                    snapshot = await self._exchanges[account_id].get_positions()
            except AuthError as exc:
                self._refusals[account_id] = self._refusals.get(account_id, 0) + 1
                if self._on_key is not None:
                    self._on_key(account_id, "rest", exc)
                else:
                    log.error("poll of %s refused: %s", account_id, exc)
                return None
            except ExchangeError as exc:
                log.warning("poll of %s failed: %s", account_id, exc)
                return None
            if self._refusals.pop(account_id, 0) and self._on_key is not None:
                self._on_key(account_id, "rest", None)
            self.polls[account_id] += 1
            await self._on_snapshot(snapshot)
            return snapshot
