"""Alerts against a real local aiohttp server that records, fails (HTTP 500) or hangs."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from loopback import serving
from prometheus_client import REGISTRY

from guardbot import logs
from guardbot.alerts import Alert, Alerter, AlertKind, StormFolder
from guardbot.clock import ManualClock
from guardbot.config import ConfigError, WebhookSettings


class Receiver:
    """A webhook receiving server: /ok/<any> records, /fail answers 500, /hang never answers."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.hanging = 0
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()
        self.base = ""

    async def _ok(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._changed:
            self.received.append((request.path, body))
            self._changed.notify_all()
        return web.json_response({"ok": True})

    async def _fail(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "down"}, status=500)

    async def _hang(self, request: web.Request) -> web.Response:
        self.hanging += 1
        await self._release.wait()
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/ok/{name}", self._ok)
        app.router.add_post("/fail", self._fail)
        app.router.add_post("/hang", self._hang)
        return app

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """The bodies received so far, once there are ``count`` (5 s at most)."""
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: len(self.received) >= count)
        return [body for _, body in self.received]

    def hook(self, path: str, **options: Any) -> WebhookSettings:
        return WebhookSettings(url=self.base + path, **options)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    async with serving(server.app()) as server.base:
        yield server
        server._release.set()


def counted(webhook: str, kind: str, outcome: str) -> float:
    labels = {"webhook": webhook, "kind": kind, "outcome": outcome}
    return REGISTRY.get_sample_value("guardbot_alerts_total", labels) or 0.0


def stale(symbol: str | None = "PERP_ETH_USDC", n: int = 0) -> Alert:
    return Alert(AlertKind.DATA_STALE, "main", symbol, f"data is {20 + n} s old",
                 {"age_s": Decimal(20 + n)})


ACTION = Alert(
    AlertKind.ACTION_TAKEN,
    "main",
    "PERP_ETH_USDC",
    "added 120.50 USDC: distance 3.1% < trigger 5%",
    {
        "amount": Decimal("120.50"),
        "reason": "distance below trigger",
        "new_distance": Decimal("0.1000"),
        "budget_left": Decimal("1E+3"),
    },
)


async def test_generic_json_body_keeps_money_exact(receiver: Receiver) -> None:
    async with Alerter([receiver.hook("/ok/json")], clock=ManualClock(1_700_000_000_500)) as a:
        a.notify(ACTION)
        (body,) = await receiver.wait_for(1)
    assert body == {
        "source": "guardbot",
        "kind": "action_taken",
        "account": "main",
        "symbol": "PERP_ETH_USDC",
        "text": "added 120.50 USDC: distance 3.1% < trigger 5%",
        "fields": {
            "amount": "120.50",
            "reason": "distance below trigger",
            "new_distance": "0.1000",
            "budget_left": "1000",
        },
        "ts": "2023-11-14T22:13:20.500+00:00",
    }


async def test_slack_and_telegram_bodies(receiver: Receiver) -> None:
    hooks = [
        receiver.hook("/ok/slack", format="slack"),
        receiver.hook("/ok/telegram", format="telegram", chat_id="-100123"),
    ]
    async with Alerter(hooks) as alerter:
        alerter.notify(ACTION)
        await receiver.wait_for(2)
    bodies = dict(receiver.received)
    slack, telegram = bodies["/ok/slack"], bodies["/ok/telegram"]
    headline = ("guardbot action_taken main PERP_ETH_USDC: "
                "added 120.50 USDC: distance 3.1% < trigger 5%")
    assert slack["text"] == headline.replace("<", "&lt;")  # Slack's mrkdwn escaping
    assert slack["blocks"][0]["text"] == {"type": "mrkdwn", "text": slack["text"]}
    assert {"type": "mrkdwn", "text": "*amount*\n120.50"} in slack["blocks"][1]["fields"]
    assert telegram["chat_id"] == "-100123"
    assert telegram["text"].splitlines() == [
        headline,
        "amount: 120.50",
        "reason: distance below trigger",
        "new_distance: 0.1000",
        "budget_left: 1000",
    ]


def test_storm_folder_admits_one_per_key_and_window() -> None:
    folder = StormFolder(window_s=60)
    assert folder.admit(stale(), now=0)
    assert not folder.admit(stale(n=1), now=1)
    assert not folder.admit(stale(n=2), now=59.9)
    assert folder.admit(stale("PERP_BTC_USDC"), now=2)  # another key
    assert folder.admit(Alert(AlertKind.LIQUIDATION, "main", "PERP_ETH_USDC", "x"), now=3)
    assert folder.next_close() == 60
    assert folder.digests(now=59) == []
    ((latest, count),) = folder.digests(now=60)
    assert (latest.text, count) == ("data is 22 s old", 2)
    # The window restarted with the digest: the storm goes on folding, one digest per window.
    assert not folder.admit(stale(n=3), now=61)
    assert folder.digests(now=119) == []
    assert [c for _, c in folder.digests(now=120)] == [1]
    # A quiet window is forgotten: the next alert goes out at once.
    assert folder.digests(now=500) == []
    assert folder.admit(stale(), now=501)


def test_zero_interval_disables_folding() -> None:
    folder = StormFolder(window_s=0)
    assert all(folder.admit(stale(), now=5) for _ in range(3))
    assert folder.digests(now=5) == []


async def test_a_storm_sends_one_alert_then_a_digest(receiver: Receiver) -> None:
    clock = ManualClock()
    suppressed_before = counted("json#0", "data_stale", "suppressed")
    async with Alerter([receiver.hook("/ok/json", min_interval_s=60)], clock=clock) as alerter:
        for n in range(50):
            alerter.notify(stale(n=n))
        alerter.notify(stale("PERP_BTC_USDC"))
        first = await receiver.wait_for(2)
        assert [b["symbol"] for b in first] == ["PERP_ETH_USDC", "PERP_BTC_USDC"]

        clock.advance(61)  # the window closes; the next notify (or the sender's timer) flushes
        alerter.notify(ACTION)
        bodies = await receiver.wait_for(4)
        digest = next(b for b in bodies[2:] if "digest" in b)
        assert digest["digest"] == {"count": 49, "window_s": 60.0}
        assert digest["text"] == (
            "49 more alerts of kind data_stale for main PERP_ETH_USDC in the last 60 s; "
            "latest: data is 69 s old"
        )
        assert digest["fields"] == {"age_s": "69"}

        alerter.notify(stale(n=100))  # still storming: folded into the next digest
    # Shutdown flushes the pending digest instead of losing it.
    bodies = await receiver.wait_for(5)
    assert bodies[4]["digest"]["count"] == 1
    assert len(receiver.received) == 5
    assert counted("json#0", "data_stale", "suppressed") - suppressed_before == 50


async def test_hanging_webhook_never_blocks_the_caller_or_other_webhooks(
    receiver: Receiver,
) -> None:
    hooks = [receiver.hook("/hang", min_interval_s=0), receiver.hook("/ok/json")]
    failed_before = counted("json#0", "liquidation", "failed")
    async with Alerter(hooks, timeout_s=0.3) as alerter:
        started = time.perf_counter()
        for symbol in ("PERP_A_USDC", "PERP_B_USDC"):
            alerter.notify(Alert(AlertKind.LIQUIDATION, "main", symbol, "liquidated"))
        assert time.perf_counter() - started < 0.05
        bodies = await receiver.wait_for(2)
        assert [b["symbol"] for b in bodies] == ["PERP_A_USDC", "PERP_B_USDC"]
        assert receiver.hanging == 1  # the hanging webhook is stuck on the first alert
    # Exit drained the hanging webhook: each post gave up at the timeout.
    assert receiver.hanging == 2
    assert counted("json#0", "liquidation", "failed") - failed_before == 2


async def test_shutdown_is_bounded_and_a_full_queue_drops_the_oldest(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    dropped_before = counted("json#0", "rejected", "dropped")
    started = time.perf_counter()
    async with Alerter([receiver.hook("/hang", min_interval_s=0)], timeout_s=30,
                       queue_size=2, drain_timeout_s=0.2) as alerter:
        for n in range(10):
            alerter.notify(Alert(AlertKind.REJECTED, "main", f"PERP_{n}_USDC", "code -1101"))
    assert time.perf_counter() - started < 2
    assert counted("json#0", "rejected", "dropped") - dropped_before == 8
    assert caplog.text.count("alert queue of webhook json#0 is full: 1 alerts dropped") == 1
    assert "dropped so far" not in caplog.text.replace("1 alerts dropped so far", "")
    assert "did not drain in time" in caplog.text


async def test_failing_webhook_is_counted_and_its_url_never_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    token_url = f"http://127.0.0.1:{dead_port}/bot123456:SECRET-TOKEN/sendMessage"
    hooks = [
        receiver.hook("/fail"),
        WebhookSettings(url=token_url, format="telegram", chat_id="1"),
        receiver.hook("/ok/json"),
    ]
    before = [counted(name, "uncertain", "failed") for name in ("json#0", "telegram#1")]
    caplog.set_level(logging.DEBUG)
    async with Alerter(hooks) as alerter:
        alerter.notify(Alert(AlertKind.UNCERTAIN, "main", "PERP_ETH_USDC", "timed out"))
        await receiver.wait_for(1)
    after = [counted(name, "uncertain", "failed") for name in ("json#0", "telegram#1")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]
    assert "webhook json#0 answered HTTP 500" in caplog.text
    assert "webhook telegram#1 failed: ConnectError" in caplog.text
    assert "SECRET-TOKEN" not in caplog.text
    assert "SECRET-TOKEN" not in repr(hooks)


def test_bad_webhook_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"alerts.webhooks.0.chat_id: required by telegram"):
        Alerter([WebhookSettings(url="https://api.telegram.org/botX/sendMessage",
                                 format="telegram")])
    with pytest.raises(ConfigError, match=r"alerts.webhooks.1.url: must be an http\(s\) URL"):
        Alerter([WebhookSettings(url="https://x"), WebhookSettings(url="ftp://x")])


async def test_notify_outside_the_context_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="guardbot.alerts")
    Alerter([]).notify(ACTION)
    assert "alert action_taken: added 120.50 USDC" in caplog.text


async def test_the_digest_goes_out_when_the_window_closes_without_further_alerts(
    receiver: Receiver,
) -> None:
    async with Alerter([receiver.hook("/ok/json", min_interval_s=0.2)]) as alerter:
        for n in range(5):
            alerter.notify(stale(n=n))
        first, digest = await receiver.wait_for(2)  # the sender's own timer sends the digest
    assert "digest" not in first
    assert digest["digest"] == {"count": 4, "window_s": 0.2}
    assert len(receiver.received) == 2


async def test_an_alert_names_the_account_as_the_config_does(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
) -> None:
    account_id = "0x" + "ef" * 32
    monkeypatch.setattr(logs, "_names", {})
    logs.name_accounts({account_id: "hedge"})
    async with Alerter([receiver.hook("/ok/json")], clock=ManualClock()) as alerter:
        alerter.notify(Alert(AlertKind.REJECTED, account_id, "PERP_ETH_USDC", "ADD rejected"))
        (body,) = await receiver.wait_for(1)
    assert body["account"] == "hedge"
    assert account_id not in str(body)
