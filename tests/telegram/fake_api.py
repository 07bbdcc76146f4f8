"""A local fake of the Telegram Bot API: an aiohttp server on loopback with ``getMe``,
``getUpdates`` (long polling, offsets confirming updates, one reader at a time) and
``sendMessage``, as Telegram documents them, plus switches for failures. Used by
tests/telegram and by the daemon's tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from loopback import serving

from guardbot.clock import Clock

BOT_ID = 7000001
TOKEN = f"{BOT_ID}:AAF-fake_TokenThatMustNeverBeLogged0123"
USERNAME = "guardbot_test_bot"
OPERATORS = "-100200300"
ALICE = {"id": 42, "is_bot": False, "first_name": "Alice", "username": "alice"}


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None


@dataclass
class FakeBotApi:
    """The Bot API of one bot (``TOKEN``). ``send`` is a user writing to the bot; ``sent`` is
    what the bot sent; ``requests`` every method called, with its parameters."""

    clock: Clock
    base: str = ""
    updates: list[dict[str, Any]] = field(default_factory=list)
    confirmed_below: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    next_update_id: int = 500
    next_message_id: int = 1
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _reader: int = 0

    @property
    def url(self) -> str:
        """The webhook URL a config names the bot by."""
        return f"{self.base}/bot{TOKEN}/sendMessage"

    async def send(self, text: str, *, chat_id: str = OPERATORS, sender: dict[str, Any] | None
                   = None, age_s: int = 0) -> int:  # fmt: skip
        """A message to the bot, ``age_s`` seconds old; returns its update_id."""
        update_id = self.next_update_id
        self.next_update_id += 1
        message = {
            "message_id": self.next_message_id, "date": self.clock.now_ms() // 1000 - age_s,
            "chat": {"id": int(chat_id), "type": "supergroup" if chat_id.startswith("-")
                     else "private"},
            "from": ALICE if sender is None else sender, "text": text,
        }  # fmt: skip
        self.next_message_id += 1
        async with self.changed:
            self.updates.append({"update_id": update_id, "message": message})
            self.changed.notify_all()
        return update_id

    async def add_update(self, update: dict[str, Any]) -> None:
        async with self.changed:
            self.updates.append({"update_id": self.next_update_id, **update})
            self.next_update_id += 1
            self.changed.notify_all()

    def fail(self, method: str, *failures: Failure) -> None:
        self.failures.setdefault(method, []).extend(failures)

    def forget_confirmations(self) -> None:
        """As if no request had confirmed anything (a crash before the next getUpdates)."""
        self.confirmed_below = 0

    def calls(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.requests if name == method]

    async def wait_sent(self, count: int, timeout_s: float = 5) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: len(self.sent) >= count)
        return self.sent

    async def wait_calls(self, method: str, count: int, timeout_s: float = 5) -> None:
        async with asyncio.timeout(timeout_s), self.changed:
            await self.changed.wait_for(lambda: len(self.calls(method)) >= count)

    # -- the server ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._method)
        return app

    @staticmethod
    def _error(status: int, description: str, **parameters: Any) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        return web.json_response(body, status=status)

    async def _method(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await request.json() if request.can_read_body else {}
        async with self.changed:
            self.requests.append((method, params))
            self.changed.notify_all()
        if request.match_info["token"] != TOKEN:
            return self._error(401, "Unauthorized")
        pending = self.failures.get(method)
        if pending:
            failure = pending.pop(0)
            if failure.retry_after is not None:
                return self._error(failure.status, failure.description,
                                   retry_after=failure.retry_after)
            return self._error(failure.status, failure.description)
        if method == "getMe":
            return web.json_response({"ok": True, "result": {
                "id": BOT_ID, "is_bot": True, "first_name": "guardbot", "username": USERNAME}})
        if method == "getUpdates":
            return await self._get_updates(params)
        if method == "sendMessage":
            return await self._send_message(params)
        return self._error(404, "Not Found")

    async def _get_updates(self, params: dict[str, Any]) -> web.Response:
        offset = params.get("offset")
        if isinstance(offset, int) and offset > 0:
            # "An update is considered confirmed as soon as getUpdates is called with an
            # offset higher than its update_id."
            self.confirmed_below = max(self.confirmed_below, offset)
        self._reader += 1
        me = self._reader
        limit = int(params.get("limit", 100))

        def waiting() -> list[dict[str, Any]]:
            return [u for u in self.updates if u["update_id"] >= self.confirmed_below][:limit]

        async with self.changed:
            try:
                async with asyncio.timeout(float(params.get("timeout", 0))):
                    await self.changed.wait_for(lambda: bool(waiting()) or self._reader != me)
            except TimeoutError:
                pass
            if self._reader != me:
                return self._error(409, "Conflict: terminated by other getUpdates request; "
                                   "make sure that only one bot instance is running")
            return web.json_response({"ok": True, "result": waiting()})

    async def _send_message(self, params: dict[str, Any]) -> web.Response:
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            return self._error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._error(400, "Bad Request: message is too long")
        message = {"message_id": self.next_message_id, "date": self.clock.now_ms() // 1000,
                   "chat": {"id": int(params["chat_id"])}, "text": text}
        self.next_message_id += 1
        async with self.changed:
            self.sent.append(params)
            self.changed.notify_all()
        return web.json_response({"ok": True, "result": message})


@contextlib.asynccontextmanager
async def serve(clock: Clock) -> AsyncIterator[FakeBotApi]:
    """The fake on a free loopback port, for the block."""
    fake = FakeBotApi(clock)
    async with serving(fake.app()) as fake.base:
        try:
            yield fake
        finally:
            async with fake.changed:
                fake._reader += 1  # a long poll still waiting ends
                fake.changed.notify_all()
