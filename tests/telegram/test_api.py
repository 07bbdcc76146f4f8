"""The Bot API client against the local fake: parsing at the edge, errors without the token."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from loopback import serving
from pydantic import SecretStr

from guardbot.telegram.api import BotApi, BotApiError, BotUrl, bot_url, parse_update

from .fake_api import BOT_ID, OPERATORS, TOKEN, USERNAME, Failure, FakeBotApi


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def api(url: str, client: httpx.AsyncClient) -> BotApi:
    return BotApi(bot_url(SecretStr(url)), client)


def test_the_bot_is_found_in_the_webhook_url() -> None:
    url = bot_url(SecretStr(f"https://api.telegram.org/bot{TOKEN}/sendMessage"))
    assert url.bot_id == str(BOT_ID)
    assert url.method("getUpdates") == f"https://api.telegram.org/bot{TOKEN}/getUpdates"
    assert url.token == TOKEN
    assert TOKEN not in repr(url) and TOKEN not in str(url)
    behind_proxy = bot_url(SecretStr(f"http://10.0.0.1:8081/tg/bot{TOKEN}/sendMessage/"))
    assert behind_proxy.method("getMe") == f"http://10.0.0.1:8081/tg/bot{TOKEN}/getMe"
    for wrong in (f"https://api.telegram.org/bot{TOKEN}/getUpdates",
                  "https://hooks.slack.com/services/T000/B000/XXXX",
                  f"https://api.telegram.org/{TOKEN}/sendMessage",
                  f"ftp://api.telegram.org/bot{TOKEN}/sendMessage"):
        with pytest.raises(ValueError, match="bot<token>/sendMessage") as caught:
            bot_url(SecretStr(wrong))
        assert TOKEN not in str(caught.value)


def test_updates_are_parsed_at_the_edge() -> None:
    update = parse_update({"update_id": 5, "message": {
        "message_id": 3, "date": 1_700_000_000, "chat": {"id": -100200300, "type": "group"},
        "from": {"id": 42, "is_bot": False, "first_name": "Alice"}, "text": "/status"}})
    assert update.update_id == 5
    assert update.message is not None
    assert (update.message.chat_id, update.message.text, update.message.sender) == (
        "-100200300", "/status", "Alice (id 42)")
    channel_post = parse_update({"update_id": 6, "message": {
        "message_id": 4, "date": 1, "chat": {"id": 1}, "text": "hi"}})
    assert channel_post.message is not None and channel_post.message.sender is None
    for other in ({"update_id": 7, "edited_message": {}},
                  {"update_id": 8, "message": {"message_id": 1, "date": 1, "chat": {"id": 1},
                                               "photo": []}},
                  {"update_id": 9, "message": {"message_id": 1, "date": "x",
                                               "chat": {"id": 1}, "text": "/pause"}}):
        assert parse_update(other).message is None
    with pytest.raises(ValueError, match="update_id"):
        parse_update({"message": {}})


async def test_the_methods_against_the_fake(bot_api: FakeBotApi,
                                            client: httpx.AsyncClient) -> None:  # fmt: skip
    bot = api(bot_api.url, client)
    assert await bot.get_me() == USERNAME
    first = await bot_api.send("/status")
    updates = await bot.get_updates(None, wait_s=1)
    assert [u.update_id for u in updates] == [first]
    assert await bot.get_updates(first + 1, wait_s=0) == [], "confirmed by the offset"
    await bot.send_message(OPERATORS, "x" * 5000, reply_to=1)
    [sent] = bot_api.sent
    assert len(sent["text"]) == 4096, "cut to Telegram's limit"
    assert sent["reply_parameters"] == {"message_id": 1, "allow_sending_without_reply": True}
    assert bot_api.calls("getUpdates")[0] == {"timeout": 1, "allowed_updates": ["message"]}
    assert repr(bot) == f"BotApi(bot {BOT_ID})"


async def test_errors_name_the_method_and_never_the_token(
    bot_api: FakeBotApi, client: httpx.AsyncClient
) -> None:
    bot = api(bot_api.url, client)
    bot_api.fail("getUpdates", Failure(429, "Too Many Requests: retry after 12",
                                       retry_after=12))
    with pytest.raises(BotApiError) as caught:
        await bot.get_updates(None, wait_s=0)
    assert str(caught.value) == "getUpdates: HTTP 429: Too Many Requests: retry after 12"
    assert (caught.value.code, caught.value.retry_after_s) == (429, 12.0)

    bot_api.fail("getMe", Failure(404, f"Not Found: no bot {TOKEN}"))
    with pytest.raises(BotApiError) as caught:
        await bot.get_me()
    assert caught.value.token_refused
    assert TOKEN not in str(caught.value) and "[redacted]" in str(caught.value)

    wrong = api(bot_api.url.replace(TOKEN, "1:wrong"), client)
    with pytest.raises(BotApiError, match="HTTP 401: Unauthorized") as caught:
        await wrong.get_me()
    assert caught.value.token_refused

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    closed = api(f"http://127.0.0.1:{port}/bot{TOKEN}/sendMessage", client)
    with pytest.raises(BotApiError, match=r"getMe: no answer \(ConnectError\)") as caught:
        await closed.get_me()
    # httpx's own error (its text may hold the URL) is never shown with it.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert TOKEN not in str(caught.value)


async def test_an_answer_that_is_not_the_bot_api_is_an_error(client: httpx.AsyncClient
                                                              ) -> None:  # fmt: skip
    async def gateway(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>bad gateway</html>")

    async def not_a_list(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "result": {"update_id": 1}})

    app = web.Application()
    app.router.add_post("/gw/bot{token}/{method}", gateway)
    app.router.add_post("/odd/bot{token}/{method}", not_a_list)
    async with serving(app) as base:
        with pytest.raises(BotApiError, match="HTTP 502 without a Bot API answer"):
            await api(f"{base}/gw/bot{TOKEN}/sendMessage", client).get_me()
        with pytest.raises(BotApiError, match="not a list of updates"):
            await api(f"{base}/odd/bot{TOKEN}/sendMessage", client).get_updates(None, wait_s=0)


def test_a_bot_url_is_a_secret() -> None:
    url = BotUrl(SecretStr(f"https://api.telegram.org/bot{TOKEN}"), str(BOT_ID))
    assert TOKEN not in repr(url)
