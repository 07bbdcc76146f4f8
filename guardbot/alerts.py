"""Alerts to operators through the webhooks named in config (``[[alerts.webhooks]]``).

The guard calls ``notify`` and moves on: it is a plain function that only queues, so a slow,
failing or hanging webhook can never block or slow a top-up. Each webhook has its own sender
task, bounded queue and HTTP timeout, so one bad webhook does not delay the others either::

    async with Alerter(settings.alerts.webhooks) as alerter:
        alerter.notify(Alert(AlertKind.ACTION_TAKEN, "main", "PERP_ETH_USDC",
                             "added 120 USDC", {"amount": Decimal("120"), "reason": ...}))

Storms are folded per webhook and per (kind, account, symbol): the first alert of a window of
``min_interval_s`` goes out at once; the rest of that window become one digest ("12 more
alerts of kind data_stale for main PERP_ETH_USDC in the last 60 s; latest: ..."), sent when
the window closes (or at shutdown). Alerts are best effort: a failed post is logged and
counted in ``guardbot_alerts_total``, never retried; the audit log is the record.

Webhook URLs of Slack and Telegram embed credentials, so a URL is never logged or put in a
metric label: webhooks are named ``<format>#<index>``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Final

import httpx

from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.config import ConfigError, WebhookSettings
from guardbot.logs import account_name
from guardbot.metrics import ALERTS

log = logging.getLogger(__name__)

FieldValue = str | int | Decimal | bool | None
# Slack section text holds at most 3000 characters, Telegram messages 4096.
MAX_TEXT: Final = 3000


class AlertKind(enum.StrEnum):
    ACTION_TAKEN = "action_taken"
    REJECTED = "rejected"
    UNCERTAIN = "uncertain"
    BUDGET_EXHAUSTED = "budget_exhausted"
    LIQUIDATION = "liquidation"
    DATA_STALE = "data_stale"
    KEY_REFUSED = "key_refused"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must hear about.

    ``text`` is one human sentence; ``fields`` carries the figures, by convention ``amount``,
    ``reason``, ``new_distance``, ``budget_left``, ``code`` (money as ``Decimal``).
    ``symbol`` is ``None`` for account-wide alerts (budget exhausted, account data stale).
    """

    kind: AlertKind
    account: str
    symbol: str | None
    text: str
    fields: Mapping[str, FieldValue] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class _Message:
    """An alert or a digest, stamped, ready to render."""

    alert: Alert
    at_ms: int
    suppressed: int = 0  # > 0: a digest of this many alerts, ``alert`` being the latest
    window_s: float = 0.0

    @property
    def text(self) -> str:
        if not self.suppressed:
            return self.alert.text
        where = " ".join(p for p in (self.alert.account, self.alert.symbol) if p)
        return (
            f"{self.suppressed} more alerts of kind {self.alert.kind} for {where} in the last "
            f"{self.window_s:g} s; latest: {self.alert.text}"
        )


def _plain(value: FieldValue) -> str | int | bool | None:
    # Decimal as a string keeps money exact in JSON and avoids "1E+2".
    return format(value, "f") if isinstance(value, Decimal) else value


def _headline(message: _Message) -> str:
    alert = message.alert
    where = " ".join(p for p in (alert.account, alert.symbol) if p)
    return f"guardbot {alert.kind} {where}: {message.text}"[:MAX_TEXT]


def _field_lines(message: _Message) -> list[str]:
    return [f"{name}: {_plain(value)}" for name, value in message.alert.fields.items()]


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions; its docs ask for these three escaped.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(message: _Message, webhook: WebhookSettings) -> dict[str, object]:
    """The request body for one webhook format: generic JSON, Slack or Telegram."""
    alert = message.alert
    if webhook.format == "slack":
        headline = _slack_escape(_headline(message))
        blocks: list[dict[str, object]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": headline}}
        ]
        if alert.fields:
            # Slack allows at most 10 fields per section.
            blocks.append({
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _slack_escape(f"*{name}*\n{_plain(value)}")}
                    for name, value in list(alert.fields.items())[:10]
                ],
            })
        return {"text": headline, "blocks": blocks}
    if webhook.format == "telegram":
        text = "\n".join([_headline(message), *_field_lines(message)])
        return {"chat_id": webhook.chat_id, "text": text[:MAX_TEXT],
                "disable_web_page_preview": True}
    body: dict[str, object] = {
        "source": "guardbot",
        "kind": str(alert.kind),
        "account": alert.account,
        "symbol": alert.symbol,
        "text": message.text,
        "fields": {name: _plain(value) for name, value in alert.fields.items()},
        "ts": datetime.fromtimestamp(message.at_ms / 1000, UTC).isoformat(timespec="milliseconds"),
    }
    if message.suppressed:
        body["digest"] = {"count": message.suppressed, "window_s": message.window_s}
    return body


_Key = tuple[AlertKind, str, str | None]


@dataclass
class _Window:
    opened: float
    suppressed: int = 0
    latest: Alert | None = None


class StormFolder:
    """Rate limiting and deduplication for one webhook, as pure bookkeeping on an injected
    ``now``: at most one alert per (kind, account, symbol) per window, the rest digested."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._windows: dict[_Key, _Window] = {}

    def admit(self, alert: Alert, now: float) -> bool:
        """True: send ``alert`` now. False: it is counted into the window's digest."""
        key = (alert.kind, alert.account, alert.symbol)
        window = self._windows.get(key)
        if window is None or now >= window.opened + self.window_s:
            self._windows[key] = _Window(opened=now)
            return True
        window.suppressed += 1
        window.latest = alert
        return False

    def digests(self, now: float, *, everything: bool = False) -> list[tuple[Alert, int]]:
        """(latest alert, count) for every window that has closed (or all, at shutdown) with
        alerts folded into it. A window that produced a digest restarts, so a continuing
        storm yields one digest per window and nothing else."""
        out: list[tuple[Alert, int]] = []
        for key, window in list(self._windows.items()):
            if not everything and now < window.opened + self.window_s:
                continue
            if window.latest is not None:
                out.append((window.latest, window.suppressed))
                self._windows[key] = _Window(opened=now)
            else:
                del self._windows[key]
        return out

    def next_close(self) -> float | None:
        """When the earliest window holding folded alerts closes."""
        pending = [w.opened + self.window_s for w in self._windows.values() if w.latest]
        return min(pending, default=None)


class _Channel:
    """One webhook: its folder, bounded queue and sender task."""

    def __init__(self, index: int, webhook: WebhookSettings, queue_size: int) -> None:
        self.name = f"{webhook.format}#{index}"
        self.webhook = webhook
        self.folder = StormFolder(webhook.min_interval_s)
        self.queue_size = queue_size
        # Unbounded underneath so the shutdown sentinel always fits; ``put`` enforces the bound.
        self.queue: asyncio.Queue[_Message | None] = asyncio.Queue()
        self.dropped = 0

    def put(self, message: _Message) -> None:
        if self.queue.qsize() >= self.queue_size:
            # Drop the oldest: under overflow the newest state matters most.
            dropped = self.queue.get_nowait()
            if dropped is not None:
                ALERTS.labels(self.name, dropped.alert.kind, "dropped").inc()
                self.dropped += 1
                if self.dropped % 100 == 1:  # a warning per drop would be a storm of its own
                    log.warning("alert queue of webhook %s is full: %d alerts dropped so far",
                                self.name, self.dropped)
        self.queue.put_nowait(message)

    def flush(self, now: float, at_ms: int, *, everything: bool = False) -> None:
        for alert, count in self.folder.digests(now, everything=everything):
            self.put(_Message(alert, at_ms, suppressed=count, window_s=self.folder.window_s))


class Alerter:
    """Sends alerts to webhooks in the background. An async context manager: on exit it
    flushes pending digests and gives the senders ``drain_timeout_s`` to deliver them."""

    def __init__(
        self,
        webhooks: Sequence[WebhookSettings],
        *,
        timeout_s: float = 5.0,
        queue_size: int = 100,
        drain_timeout_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        for index, webhook in enumerate(webhooks):
            if webhook.format == "telegram" and not webhook.chat_id:
                raise ConfigError(f"alerts.webhooks.{index}.chat_id: required by telegram")
            if not webhook.url.get_secret_value().startswith(("http://", "https://")):
                raise ConfigError(f"alerts.webhooks.{index}.url: must be an http(s) URL")
        self._webhooks = list(webhooks)
        self._timeout_s = timeout_s
        self._queue_size = queue_size
        self._drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._channels: list[_Channel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Alerter:
        self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        self._channels = [
            _Channel(i, webhook, self._queue_size) for i, webhook in enumerate(self._webhooks)
        ]
        self._tasks = [
            asyncio.create_task(self._send_loop(channel), name=channel.name)
            for channel in self._channels
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for channel in self._channels:
            channel.flush(self._clock.monotonic(), self._now_ms(), everything=True)
            channel.queue.put_nowait(None)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self._drain_timeout_s)
            for task in late:
                log.warning("webhook %s did not drain in time; alerts lost", task.get_name())
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
        self._tasks, self._channels, self._client = [], [], None

    def notify(self, alert: Alert) -> None:
        """Queue ``alert`` for every webhook, subject to storm folding. Never waits, never
        raises for a webhook's sake; without an entered context it only logs. The account is
        named as the config names it (``guardbot.logs.account_name``)."""
        alert = replace(alert, account=account_name(alert.account))
        log.debug("alert %s: %s", alert.kind, alert.text,
                 extra={"account": alert.account, "symbol": alert.symbol})
        now, at_ms = self._clock.monotonic(), self._now_ms()
        for channel in self._channels:
            channel.flush(now, at_ms)
            if channel.folder.admit(alert, now):
                channel.put(_Message(alert, at_ms))
            else:
                ALERTS.labels(channel.name, alert.kind, "suppressed").inc()

    def _now_ms(self) -> int:
        return self._clock.now_ms()

    async def _send_loop(self, channel: _Channel) -> None:
        while True:
            channel.flush(self._clock.monotonic(), self._now_ms())
            close = channel.folder.next_close()
            timeout = None if close is None else max(0.0, close - self._clock.monotonic())
            try:
                message = await asyncio.wait_for(channel.queue.get(), timeout)
            except TimeoutError:
                continue
            if message is None:
                return
            await self._post(channel, message)

    async def _post(self, channel: _Channel, message: _Message) -> None:
        assert self._client is not None
        kind = message.alert.kind
        try:
            response = await self._client.post(
                channel.webhook.url.get_secret_value(), json=render(message, channel.webhook)
            )
        except httpx.HTTPError as exc:
            # The exception text can contain the URL, which can contain a token: name the type.
            log.warning("webhook %s failed: %s", channel.name, type(exc).__name__)
            ALERTS.labels(channel.name, kind, "failed").inc()
            return
        if response.is_success:
            ALERTS.labels(channel.name, kind, "sent").inc()
        else:
            log.warning("webhook %s answered HTTP %s", channel.name, response.status_code)
            ALERTS.labels(channel.name, kind, "failed").inc()
