"""The Telegram Bot API as guardbot uses it: ``getMe``, ``getUpdates`` (long polling) and
``sendMessage``, over httpx, with the answers parsed into frozen values at this edge.

The bot token is part of every URL (``https://api.telegram.org/bot<token>/<method>``), so it
is handled like an Orderly secret: it stays in a ``SecretStr``, and no log line, exception or
repr holds it or the URL. Errors name the method and the bot by its id (the number before
the token's colon, which Telegram shows as the bot's user id: not a secret).

The bot is the one of a ``format = "telegram"`` webhook, whose URL ends in
``/bot<token>/sendMessage``: ``bot_url`` derives the bot's base URL from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
from pydantic import SecretStr

# Telegram's limit on the text of one message.
MAX_MESSAGE: Final = 4096
_WEBHOOK = re.compile(
    r"^(?P<base>https?://[^/?#]+(?:/[^?#]*)?/bot(?P<id>\d+):[A-Za-z0-9_-]+)/sendMessage/?$"
)


@dataclass(frozen=True, slots=True)
class BotUrl:
    """Where a bot's methods are: ``<base>/<method>``; ``base`` holds the token."""

    base: SecretStr
    bot_id: str

    def method(self, name: str) -> str:
        return f"{self.base.get_secret_value()}/{name}"

    @property
    def token(self) -> str:
        return self.base.get_secret_value().rsplit("/bot", 1)[1]


def bot_url(webhook_url: SecretStr) -> BotUrl:
    """The bot of a Telegram webhook URL. Raises ``ValueError`` (without the URL, which holds
    the token) when it is not ``<api>/bot<token>/sendMessage``."""
    match = _WEBHOOK.match(webhook_url.get_secret_value())
    if match is None:
        raise ValueError("must be <Bot API>/bot<token>/sendMessage (as"
                         " https://api.telegram.org/bot<token>/sendMessage) to take commands")
    return BotUrl(SecretStr(match["base"]), match["id"])


class BotApiError(Exception):
    """A Bot API call that failed: no answer, an HTTP error or ``"ok": false``. The text
    names the method and Telegram's description, never the URL or the token. ``code`` is
    Telegram's ``error_code`` (the HTTP status), ``retry_after_s`` its flood-control wait."""

    def __init__(self, method: str, reason: str, *, code: int | None = None,
                 retry_after_s: float | None = None) -> None:  # fmt: skip
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.code = code
        self.retry_after_s = retry_after_s

    @property
    def token_refused(self) -> bool:
        """Telegram does not know the token (revoked, mistyped): nothing works until the
        config is fixed."""
        return self.code in (401, 404)

    @property
    def another_reader(self) -> bool:
        """Another process reads this bot's messages (a second instance, a webhook set)."""
        return self.code == 409


@dataclass(frozen=True, slots=True)
class Message:
    """A text message sent to the bot. ``sender`` names who sent it as Telegram does
    (``@alice (id 42)``), ``None`` for a channel post."""

    message_id: int
    chat_id: str
    date_s: int
    text: str
    sender: str | None


@dataclass(frozen=True, slots=True)
class Update:
    """One update; ``message`` is ``None`` for anything but a new text message (edits,
    stickers, members joining), which the bot only skips."""

    update_id: int
    message: Message | None


def _sender(raw: Any) -> str | None:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), int):
        return None
    name = f"@{raw['username']}" if isinstance(raw.get("username"), str) else str(
        raw.get("first_name") or "someone")
    return f"{name} (id {raw['id']})"


def parse_update(raw: Any) -> Update:
    """An ``Update`` object. Raises ``ValueError`` without an integer ``update_id``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("update_id"), int):
        raise ValueError("an update without an update_id")
    message = raw.get("message")
    if not isinstance(message, Mapping):
        return Update(raw["update_id"], None)
    chat, text = message.get("chat"), message.get("text")
    if (not isinstance(chat, Mapping) or not isinstance(chat.get("id"), int)
            or not isinstance(text, str) or not isinstance(message.get("message_id"), int)
            or not isinstance(message.get("date"), int)):  # fmt: skip
        return Update(raw["update_id"], None)
    return Update(raw["update_id"], Message(
        message["message_id"], str(chat["id"]), message["date"], text,
        _sender(message.get("from"))))  # fmt: skip


class BotApi:
    """One bot's methods over a shared ``httpx.AsyncClient`` (not closed here)."""

    def __init__(self, url: BotUrl, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    @property
    def bot_id(self) -> str:
        return self._url.bot_id

    def __repr__(self) -> str:
        return f"BotApi(bot {self._url.bot_id})"

    async def call(self, method: str, payload: Mapping[str, Any], *, timeout_s: float) -> Any:
        """The ``result`` of ``method``. Raises ``BotApiError``."""
        try:
            response = await self._client.post(self._url.method(method), json=dict(payload),
                                                timeout=timeout_s)  # fmt: skip
        except httpx.HTTPError as exc:
            # httpx's text can hold the URL, and so the token: name the type only.
            raise BotApiError(method, f"no answer ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, Mapping):
            raise BotApiError(method, f"HTTP {response.status_code} without a Bot API answer",
                              code=response.status_code)  # fmt: skip
        if body.get("ok") is True and response.is_success:
            return body.get("result")
        code = body.get("error_code")
        code = code if isinstance(code, int) else response.status_code
        description = str(body.get("description") or "no description")[:200]
        description = description.replace(self._url.token, "[redacted]")
        parameters = body.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, Mapping) else None
        raise BotApiError(
            method, f"HTTP {code}: {description}", code=code,
            retry_after_s=float(retry_after) if isinstance(retry_after, int | float) else None)

    async def get_me(self, *, timeout_s: float = 10.0) -> str | None:
        """The bot's username (``None`` if it has none)."""
        result = await self.call("getMe", {}, timeout_s=timeout_s)
        username = result.get("username") if isinstance(result, Mapping) else None
        return username if isinstance(username, str) else None

    async def get_updates(self, offset: int | None, *, wait_s: int) -> list[Update]:
        """New messages from ``offset`` on (which confirms every update before it), waiting up
        to ``wait_s`` seconds for one to arrive."""
        payload: dict[str, Any] = {"timeout": wait_s, "allowed_updates": ["message"]}
        if offset is not None:
            payload["offset"] = offset
        result = await self.call("getUpdates", payload, timeout_s=wait_s + 15.0)
        if not isinstance(result, Sequence):
            raise BotApiError("getUpdates", "the answer is not a list of updates")
        try:
            return [parse_update(raw) for raw in result]
        except ValueError as exc:
            raise BotApiError("getUpdates", str(exc)) from None

    async def send_message(self, chat_id: str, text: str, *, reply_to: int | None = None,
                           timeout_s: float = 10.0) -> None:  # fmt: skip
        """Send ``text`` (plain, cut to ``MAX_MESSAGE``) to the chat, as an answer to
        ``reply_to`` if given."""
        payload: dict[str, Any] = {"chat_id": chat_id, "text": text[:MAX_MESSAGE],
                                   "link_preview_options": {"is_disabled": True}}
        if reply_to is not None:
            payload["reply_parameters"] = {"message_id": reply_to,
                                           "allow_sending_without_reply": True}
        await self.call("sendMessage", payload, timeout_s=timeout_s)
