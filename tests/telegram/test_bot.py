"""The Telegram commands against the local fake Bot API, a real audit log and a real kill
switch file: who is answered, what each command does, offsets, back-off, secrecy."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guardbot import killswitch
from guardbot.audit import queries
from guardbot.audit.errors import NotRecorded
from guardbot.audit.records import CommandRecord
from guardbot.audit.store import AuditLog
from guardbot.clock import ManualClock
from guardbot.config import Settings, parse_config
from guardbot.telegram import bot as telegram
from guardbot.telegram.bot import TelegramCommands, split

from .fake_api import OPERATORS, TOKEN, USERNAME, Failure, FakeBotApi

STRANGER = "555"


async def backing_off(clock: ManualClock) -> float:
    """How long the bot waits, once it waits on ``clock`` (after a failed call)."""
    async with asyncio.timeout(5):
        # ManualClock has no event for a new sleeper: look every few milliseconds.
        while (due := clock.next_wakeup()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    return due - clock.monotonic()


def configure(tmp_path: Path, fake: FakeBotApi, **telegram_keys: Any) -> Settings:
    return parse_config({
        "audit": {"spool_dir": str(tmp_path / "spool")},
        "guard": {"kill_switch_file": str(tmp_path / "STOP")},
        "alerts": {"webhooks": [{"url": fake.url, "format": "telegram",
                                 "chat_id": OPERATORS}]},
        "telegram": {"commands": True, "long_poll_s": 1, **telegram_keys},
    })  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path, bot_api: FakeBotApi) -> Settings:
    return configure(tmp_path, bot_api)


@pytest.fixture
async def running(settings: Settings, audit: AuditLog, clock: ManualClock
                  ) -> AsyncIterator[TelegramCommands]:  # fmt: skip
    async with TelegramCommands(settings, audit.record_command, clock=clock) as commands:
        yield commands


async def recorded(audit: AuditLog) -> list[dict[str, Any]]:
    await audit.flush(10)
    return queries.list_commands(audit.engine)


async def test_pause_and_resume_are_the_kill_switch_and_are_audited(
    running: TelegramCommands, bot_api: FakeBotApi, audit: AuditLog, settings: Settings
) -> None:
    stop = settings.guard.kill_switch_file
    assert stop is not None
    first = await bot_api.send("/pause ETH is wild")
    sent = await bot_api.wait_sent(1)
    assert killswitch.engaged(stop)
    assert "paused by @alice (id 42) over Telegram" in stop.read_text()
    assert "ETH is wild" in stop.read_text()
    assert sent[0]["chat_id"] == OPERATORS
    assert sent[0]["text"].startswith("paused: no new action until /resume")
    assert sent[0]["reply_parameters"]["message_id"] == 1

    await bot_api.send("/pause")
    assert (await bot_api.wait_sent(2))[1]["text"].startswith("already paused")
    await bot_api.send("/resume")
    resumed = (await bot_api.wait_sent(3))[2]["text"]
    assert resumed.startswith("resumed: actions are allowed again")
    assert "paused by @alice" in resumed, "the answer says who had paused"
    assert not stop.exists()
    await bot_api.send(f"/resume@{USERNAME}")
    assert (await bot_api.wait_sent(4))[3]["text"] == "not paused: actions are allowed"

    rows = await recorded(audit)
    assert [(r["command"], r["result"]) for r in rows] == [
        ("pause", "done"), ("pause", "unchanged"), ("resume", "done"), ("resume", "unchanged")]
    assert rows[0]["chat_id"] == OPERATORS
    assert rows[0]["sender"] == "@alice (id 42)"
    assert rows[0]["arguments"] == "ETH is wild"
    assert rows[0]["channel"] == "telegram"
    assert rows[0]["run_id"] == audit.run_id
    assert rows[0]["detail"]["update_id"] == str(first)
    assert rows[0]["message"].startswith("paused: no new action")


async def test_only_the_operators_chats_are_answered(
    running: TelegramCommands, bot_api: FakeBotApi, audit: AuditLog, settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="guardbot.telegram")
    for _ in range(3):
        await bot_api.send("/pause", chat_id=STRANGER,
                           sender={"id": 666, "is_bot": False, "first_name": "Mallory"})
    await bot_api.send("just chatting about the weather")  # no command: not for the bot
    await bot_api.send("/pause@some_other_bot")  # addressed to another bot in the group
    await bot_api.send("/help")
    sent = await bot_api.wait_sent(1)
    await asyncio.sleep(0.1)
    assert len(sent) == 1 and sent[0]["chat_id"] == OPERATORS
    assert sent[0]["text"].startswith("guardbot commands:")
    assert not killswitch.engaged(settings.guard.kill_switch_file or Path("/nonexistent"))
    assert [r["command"] for r in await recorded(audit)] == ["help"]
    strangers = [r for r in caplog.records if STRANGER in r.getMessage()]
    assert [r.levelno for r in strangers] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert "not an operator's chat_id" in strangers[0].getMessage()
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_unknown_commands_are_answered_with_the_list_and_audited(
    running: TelegramCommands, bot_api: FakeBotApi, audit: AuditLog
) -> None:
    await bot_api.send("/sell everything")
    text = (await bot_api.wait_sent(1))[0]["text"]
    assert text.startswith("unknown command /sell")
    assert "/pause [why]" in text
    [row] = await recorded(audit)
    assert (row["command"], row["arguments"], row["result"]) == ("sell", "everything",
                                                                  "answered")


async def test_a_stale_resume_is_not_carried_out_but_a_stale_pause_is(
    running: TelegramCommands, bot_api: FakeBotApi, audit: AuditLog, settings: Settings
) -> None:
    stop = settings.guard.kill_switch_file
    assert stop is not None
    await bot_api.send("/pause", age_s=3600)
    await bot_api.wait_sent(1)
    assert stop.exists(), "pausing is always safe"
    await bot_api.send("/resume", age_s=telegram.STALE_RESUME_S + 60)
    text = (await bot_api.wait_sent(2))[1]["text"]
    assert text.startswith("NOT resumed: this /resume was sent 6 min ago")
    assert stop.exists()
    await bot_api.send("/resume", age_s=telegram.STALE_RESUME_S - 10)
    await bot_api.wait_sent(3)
    assert not stop.exists()
    assert [r["result"] for r in await recorded(audit)] == ["done", "stale", "done"]


async def test_a_kill_switch_that_cannot_be_created_is_a_clear_failure(
    tmp_path: Path, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock
) -> None:
    settings = configure(tmp_path, bot_api)
    settings = settings.model_copy(update={"guard": settings.guard.model_copy(
        update={"kill_switch_file": tmp_path / "missing-folder" / "STOP"})})
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        await bot_api.send("/pause")
        text = (await bot_api.wait_sent(1))[0]["text"]
    assert text.startswith("NOT paused: cannot create the kill switch file")
    assert "No such file or directory" in text
    assert [r["result"] for r in await recorded(audit)] == ["failed"]


async def test_a_command_is_carried_out_once_even_if_telegram_sends_it_again(
    settings: Settings, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock
) -> None:
    stop = settings.guard.kill_switch_file
    assert stop is not None
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        paused = await bot_api.send("/pause")
        await bot_api.wait_sent(1)
    # A crash before any request confirmed the update: Telegram holds it still. Meanwhile an
    # operator released the switch by hand; the restarted bot must not pause again.
    bot_api.forget_confirmations()
    stop.unlink()
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        await bot_api.send("/help")
        await bot_api.wait_sent(2)
    assert not stop.exists()
    assert [r["command"] for r in await recorded(audit)] == ["pause", "help"]
    offsets = [call.get("offset") for call in bot_api.calls("getUpdates")]
    assert offsets[0] is None, "a first start takes what Telegram holds"
    assert paused + 1 in offsets
    assert (settings.audit.spool_dir / "telegram-7000001.offset").read_text() == (
        f"{paused + 2}\n")

    # Without the kept offset the same update would be carried out again (what the file
    # prevents).
    (settings.audit.spool_dir / "telegram-7000001.offset").unlink()
    bot_api.forget_confirmations()
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        await bot_api.wait_sent(4)
    assert stop.exists()


async def test_updates_that_are_not_text_messages_are_skipped_and_confirmed(
    running: TelegramCommands, bot_api: FakeBotApi, audit: AuditLog
) -> None:
    await bot_api.add_update({"edited_message": {"message_id": 9, "text": "/pause"}})
    await bot_api.add_update({"message": {"message_id": 10, "date": 0,
                                          "chat": {"id": int(OPERATORS)}, "sticker": {}}})
    await bot_api.send("/help")
    await bot_api.wait_sent(1)
    assert [r["command"] for r in await recorded(audit)] == ["help"]


async def test_bot_api_failures_are_retried_with_backoff_and_flood_control(
    settings: Settings, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="guardbot.telegram")
    bot_api.fail("getUpdates", Failure(502, "Bad Gateway"), Failure(502, "Bad Gateway"),
                 Failure(429, "Too Many Requests: retry after 30", retry_after=30))
    await bot_api.send("/pause")
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        waits = []
        for calls in (1, 2, 3):
            await bot_api.wait_calls("getUpdates", calls)
            waits.append(await backing_off(clock))
            assert len(bot_api.calls("getUpdates")) == calls, "no retry before the wait"
            clock.advance(waits[-1])
        await bot_api.wait_sent(1)
    # Back-off doubling from RETRY_BASE_S, then flood control's retry_after.
    assert waits == [telegram.RETRY_BASE_S, 2 * telegram.RETRY_BASE_S, 30]
    failures = [r for r in caplog.records if "getUpdates: HTTP" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_a_refused_token_and_a_second_reader_are_named(
    tmp_path: Path, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = configure(tmp_path, bot_api)
    bot_api.fail("getMe", Failure(401, "Unauthorized"))
    bot_api.fail("getUpdates", Failure(409, "Conflict: terminated by other getUpdates "
                                       "request; make sure that only one bot instance is "
                                       "running"))
    async with TelegramCommands(settings, audit.record_command, clock=clock):
        clock.advance(await backing_off(clock))
        await bot_api.wait_calls("getUpdates", 1)
        clock.advance(await backing_off(clock))
        await bot_api.wait_calls("getUpdates", 2)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("Telegram refuses the bot token" in m and "HTTP 401" in m for m in errors)
    assert any("another process reads this bot's messages" in m for m in errors)
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


async def test_an_answer_is_sent_even_if_the_audit_log_refuses_the_record(
    settings: Settings, bot_api: FakeBotApi, clock: ManualClock
) -> None:
    async def refuse(record: CommandRecord) -> None:
        raise NotRecorded("the spool disk is full")

    async with TelegramCommands(settings, refuse, clock=clock):
        await bot_api.send("/pause")
        text = (await bot_api.wait_sent(1))[0]["text"]
    assert text.startswith("paused")
    assert text.endswith("(not recorded in the audit log: the spool disk is full)")


def test_webhooks_sharing_a_bot_share_its_reader(tmp_path: Path, bot_api: FakeBotApi) -> None:
    settings = parse_config({
        "guard": {"kill_switch_file": str(tmp_path / "STOP")},
        "alerts": {"webhooks": [
            {"url": bot_api.url, "format": "telegram", "chat_id": OPERATORS},
            {"url": bot_api.url, "format": "telegram", "chat_id": "12345"},
            {"url": bot_api.url.replace(TOKEN, "99:other"), "format": "telegram",
             "chat_id": "777"},
            {"url": "https://hooks.example.com/x", "format": "slack"},
        ]},
        "telegram": {"commands": True},
    })  # fmt: skip
    found = sorted(telegram.bots(settings).values(), key=lambda b: b[0].bot_id)
    assert [(url.bot_id, chats) for url, chats in found] == [
        ("7000001", frozenset({OPERATORS, "12345"})), ("99", frozenset({"777"}))]


async def test_nothing_is_read_unless_commands_are_on(
    tmp_path: Path, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock
) -> None:
    settings = configure(tmp_path, bot_api, commands=False)
    async with TelegramCommands(settings, audit.record_command, clock=clock) as commands:
        assert commands.bots == []
    assert bot_api.requests == []


def test_long_answers_are_split_at_line_ends() -> None:
    assert split("one\ntwo", size=7) == ["one\ntwo"]
    assert split("one\ntwo\nthree", size=8) == ["one\ntwo", "three"]
    lines = "\n".join(f"line {i:03d}" for i in range(100))
    parts = split(lines, size=100, most=3)
    assert len(parts) == 3 and all(len(p) <= 100 for p in parts)
    assert parts[-1].endswith("more lines not shown")
    shown = sum(p.count("line ") for p in parts)
    assert f"... {100 - shown} more lines not shown" in parts[-1]
    assert split("x" * 50, size=20) == ["x" * 20]


async def test_status_and_budget_answer_from_the_live_state(
    settings: Settings, bot_api: FakeBotApi, audit: AuditLog, clock: ManualClock
) -> None:
    from .test_text import state

    calls = 0

    async def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the book is being rebuilt")
        return state()

    async with TelegramCommands(settings, audit.record_command, snapshot, clock=clock):
        await bot_api.send("/status")
        await bot_api.send("/budget")
        await bot_api.send("/status")
        sent = await bot_api.wait_sent(3)
    assert sent[0]["text"].splitlines()[1] == (
        "! main ETH LONG 4.10% to liq (trigger 5.00%), margin 150.00")
    assert sent[1]["text"].splitlines()[1] == "main: 19,880.00 of 20,000.00 left (120.00 added)"
    assert sent[2]["text"] == "/status failed: RuntimeError"
    rows = await recorded(audit)
    assert [(r["command"], r["result"]) for r in rows] == [
        ("status", "answered"), ("budget", "answered"), ("status", "failed")]
    assert rows[0]["message"] == ("answered with 3 positions: guardbot LIVE, ready: 3 "
                                  "positions, 1 account guarded here")
