"""The operators' Telegram commands: read by long polling, checked, carried out, audited,
answered.

    /status   every guarded position: distance to liquidation against its trigger, margin
    /budget   what each account and position may still be given today
    /pause    engage the kill switch (``guardbot.killswitch``): no new action
    /resume   release it
    /help     the list

One ``CommandBot`` per bot (the bot of each ``format = "telegram"`` webhook; webhooks sharing
a bot share its reader) polls ``getUpdates`` and answers only the chats of its webhooks
(``chat_id``). A message from any other chat gets no answer and is logged (once per chat at
WARNING) by chat id. Every command from an operator's chat, known or not, is recorded in the
audit log (``operator_commands``) with what came of it, before it is answered.

A command is carried out at most once: the offset of the next update is written to a file
in the spool folder (fsync'd) before an update is handled, so neither a new request nor a
restart sees it again (Telegram also forgets it once asked from that offset). A crash between
the two loses that one command; the operator, who got no answer, sends it again. A
``/resume`` older than ``STALE_RESUME_S`` (sent while guardbot was not listening) is not
carried out, since the reason for the pause may have changed; a ``/pause`` always is.

Failures of the Bot API (no answer, 5xx, 429 flood control, 409 another reader) are retried
with ``backoff``; the first of a run of failures is logged, never with the token.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar

import httpx

from guardbot import killswitch
from guardbot.audit.errors import AuditError
from guardbot.audit.records import CommandRecord
from guardbot.backoff import backoff, retry_delay
from guardbot.clock import SYSTEM_CLOCK, Clock
from guardbot.config import Settings
from guardbot.logs import register_secret
from guardbot.telegram.api import MAX_MESSAGE, BotApi, BotApiError, BotUrl, Message, bot_url
from guardbot.telegram.text import budget_answer, status_answer

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL: Final = "telegram"
STALE_RESUME_S: Final = 300
# Back-off after failed Bot API calls: from 1 s up to 2 minutes.
RETRY_BASE_S: Final = 1.0
RETRY_CAP_S: Final = 120.0
# An answer longer than one message is sent in at most this many.
MAX_MESSAGES: Final = 4

HELP: Final = (
    "guardbot commands:\n"
    "/status - every guarded position: distance to liquidation vs trigger, margin\n"
    "/budget - what each account and position may still be given today\n"
    "/pause [why] - engage the kill switch: no new action until /resume\n"
    "/resume - release the kill switch"
)


@dataclass(frozen=True, slots=True)
class Reply:
    """What came of a command: ``result`` (one of ``tables.COMMAND_RESULTS``), the
    ``answer`` sent back, and ``summary``, the audit record's message (default: the
    answer's first line)."""

    result: str
    answer: str
    summary: str | None = None

    @property
    def recorded(self) -> str:
        return self.summary or self.answer.splitlines()[0]


@dataclass(frozen=True, slots=True)
class Command:
    """A command from an operator: ``/pause@guardbot_bot too wild`` is ``pause`` with
    ``arguments`` ``too wild``, addressed to ``guardbot_bot``."""

    name: str
    arguments: str
    addressee: str | None

    @classmethod
    def parse(cls, text: str) -> Command | None:
        """``None`` unless ``text`` is a command (starts with ``/``)."""
        text = text.strip()
        if not text.startswith("/") or len(text) < 2:
            return None
        word, _, rest = text[1:].partition(" ")
        name, _, addressee = word.partition("@")
        return cls(name.lower()[:64], rest.strip(), addressee or None)


Snapshot = Callable[[], Awaitable[Mapping[str, Any]]]


class Commands:
    """What the commands do, whatever channel they come from. ``snapshot`` gives the
    daemon's live state model (``guardbot.view.state.LiveState.snapshot``) that ``/status``
    and ``/budget`` show."""

    def __init__(self, kill_switch: Path, snapshot: Snapshot | None = None, *,
                 clock: Clock = SYSTEM_CLOCK) -> None:  # fmt: skip
        self.kill_switch = kill_switch
        self.snapshot = snapshot
        self.clock = clock

    async def run(self, command: Command, who: str, sent_ms: int) -> Reply:
        if command.name == "pause":
            return self.pause(command, who)
        if command.name == "resume":
            return self.resume(sent_ms)
        if command.name in ("status", "budget"):
            return await self.show(command.name)
        if command.name in ("help", "start"):
            return Reply("answered", HELP, "listed the commands")
        return Reply("answered", f"unknown command /{command.name}\n\n{HELP}",
                     f"unknown command /{command.name}")

    async def show(self, name: str) -> Reply:
        """``/status`` or ``/budget`` from the live state model."""
        if self.snapshot is None:
            return Reply("failed", f"/{name} is not available: this daemon keeps no live state")
        try:
            state = await self.snapshot()
        except Exception as exc:  # the answer says so; the guard goes on
            log.exception("the live state for /%s could not be built", name)
            return Reply("failed", f"/{name} failed: {type(exc).__name__}")
        answer = status_answer(state) if name == "status" else budget_answer(state)
        positions = len(state.get("positions") or [])
        return Reply("answered", answer, f"answered with {positions} position"
                     f"{'' if positions == 1 else 's'}: {answer.splitlines()[0]}")

    def pause(self, command: Command, who: str) -> Reply:
        when = datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)
        why = f": {command.arguments}" if command.arguments else ""
        note = f"paused by {who} over Telegram at {when.isoformat(timespec='seconds')}{why}"
        try:
            created = killswitch.engage(self.kill_switch, note)
        except OSError as exc:
            return Reply("failed", f"NOT paused: cannot create the kill switch file "
                         f"{self.kill_switch}: {exc.strerror}")
        if not created:
            held = killswitch.note(self.kill_switch)
            return Reply("unchanged", "already paused: no new action is taken"
                         + (f" ({held})" if held else ""))
        return Reply("done", f"paused: no new action until /resume (kill switch "
                     f"{self.kill_switch} created)")

    def resume(self, sent_ms: int) -> Reply:
        age_s = (self.clock.now_ms() - sent_ms) / 1000
        if age_s > STALE_RESUME_S:
            return Reply("stale", f"NOT resumed: this /resume was sent {age_s / 60:.0f} min "
                         "ago, while guardbot was not listening; send it again if it still "
                         "holds")
        try:
            held = killswitch.release(self.kill_switch)
        except OSError as exc:
            return Reply("failed", f"NOT resumed: cannot remove the kill switch file "
                         f"{self.kill_switch}: {exc.strerror}")
        if held is None:
            return Reply("unchanged", "not paused: actions are allowed")
        return Reply("done", "resumed: actions are allowed again"
                     + (f" (it was {held})" if held else ""))


class OffsetFile:
    """The next update to ask for, kept in a file: written and fsync'd before an update is
    handled, so no update is handled twice, across restarts too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("cannot read the Telegram offset in %s (%s): starting from the "
                        "updates Telegram still holds", self.path, exc)
            return None

    def save(self, offset: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".new")
        with open(temporary, "w") as file:
            file.write(f"{offset}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


Recorder = Callable[[CommandRecord], Awaitable[None]]


class CommandBot:
    """One bot's reader: polls, answers its ``chats`` only, records every command."""

    def __init__(
        self,
        api: BotApi,
        chats: frozenset[str],
        commands: Commands,
        record: Recorder,
        offsets: OffsetFile,
        *,
        long_poll_s: int = 50,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.api = api
        self.chats = chats
        self.commands = commands
        self._record = record
        self._offsets = offsets
        self._long_poll_s = long_poll_s
        self._clock = clock
        self.username: str | None = None
        self._strangers: set[str] = set()
        self._failing: str | None = None

    @property
    def name(self) -> str:
        return f"telegram bot {self.api.bot_id}"

    async def run(self) -> None:
        """Read and answer commands until cancelled."""
        self.username = await self._patiently(self.api.get_me)
        log.info("%s (@%s) takes commands from %d chat(s)", self.name, self.username,
                 len(self.chats))
        offset = await asyncio.to_thread(self._offsets.load)
        while True:
            updates = await self._patiently(functools.partial(
                self.api.get_updates, offset, wait_s=self._long_poll_s))
            for update in updates:
                if offset is not None and update.update_id < offset:
                    continue  # confirmed already (a server that resends)
                offset = update.update_id + 1
                await self._keep(offset)
                if update.message is None:
                    continue
                try:
                    await self.handle(update.update_id, update.message)
                except Exception:  # a bug must not stop the operators' commands
                    log.exception("%s: update %d could not be handled", self.name,
                                  update.update_id)

    async def _keep(self, offset: int) -> None:
        """Write the offset before handling the update it passes; until it is written
        nothing is handled (a command carried out twice is worse than one late)."""
        delays = backoff(RETRY_BASE_S, RETRY_CAP_S)
        while True:
            try:
                await asyncio.to_thread(self._offsets.save, offset)
                return
            except OSError as exc:
                log.error("%s: cannot write %s (%s); commands wait until it can be written",
                          self.name, self._offsets.path, exc.strerror)
                await self._clock.sleep(next(delays))

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it answers, backing off after each failure."""
        delays = backoff(RETRY_BASE_S, RETRY_CAP_S)
        while True:
            try:
                result = await call()
            except BotApiError as exc:
                self._report(exc)
                await self._clock.sleep(retry_delay(next(delays), exc.retry_after_s))
                continue
            if self._failing is not None:
                log.info("%s: the Bot API answers again", self.name)
                self._failing = None
            return result

    def _report(self, exc: BotApiError) -> None:
        first = self._failing is None
        self._failing = str(exc)
        if not first:
            log.debug("%s: still failing: %s", self.name, exc)
        elif exc.token_refused:
            log.error("%s: Telegram refuses the bot token (%s): check the webhook URL; "
                      "retrying", self.name, exc)
        elif exc.another_reader:
            log.error("%s: another process reads this bot's messages (%s): a bot has one "
                      "reader, so turn telegram.commands on in one instance only", self.name,
                      exc)
        else:
            log.warning("%s: %s; retrying with back-off", self.name, exc)

    async def handle(self, update_id: int, message: Message) -> None:
        """One message: ignored unless a command from an operator's chat addressed to us;
        else carried out, recorded and answered."""
        if message.chat_id not in self.chats:
            level = logging.DEBUG if message.chat_id in self._strangers else logging.WARNING
            self._strangers.add(message.chat_id)
            log.log(level, "%s: ignored a message from chat %s, which is not an operator's "
                    "chat_id in the config", self.name, message.chat_id)
            return
        command = Command.parse(message.text)
        if command is None:
            return  # chatter in an operators' group
        if (command.addressee and self.username
                and command.addressee.lower() != self.username.lower()):  # fmt: skip
            return  # for another bot in the group
        who = message.sender or f"chat {message.chat_id}"
        reply = await self.commands.run(command, who, message.date_s * 1000)
        log.info("%s: /%s from %s in chat %s: %s", self.name, command.name, who,
                 message.chat_id, reply.recorded)
        answer = reply.answer
        try:
            await self._record(CommandRecord(
                channel=CHANNEL, chat_id=message.chat_id, sender=message.sender,
                command=command.name, arguments=command.arguments, result=reply.result,
                message=reply.recorded, detail={
                    "bot_id": self.api.bot_id, "update_id": str(update_id),
                    "message_id": str(message.message_id),
                    "sent_at": datetime.fromtimestamp(message.date_s, UTC).isoformat()}))
        except (AuditError, ValueError) as exc:
            log.error("%s: /%s was not recorded in the audit log: %s", self.name,
                      command.name, exc)
            answer += f"\n(not recorded in the audit log: {exc})"
        await self._answer(message, answer)

    async def _answer(self, message: Message, text: str) -> None:
        for part in split(text):
            try:
                await self.api.send_message(message.chat_id, part, reply_to=message.message_id)
            except BotApiError as exc:
                log.warning("%s: could not answer chat %s: %s", self.name, message.chat_id,
                            exc)
                return


def split(text: str, size: int = MAX_MESSAGE, most: int = MAX_MESSAGES) -> list[str]:
    """``text`` in messages of at most ``size`` characters, cut at line ends, at most
    ``most`` of them (the last then says how many lines were left out)."""
    lines = [line[:size] for line in text.split("\n")]
    parts: list[list[str]] = [[]]
    length = -1
    for line in lines:
        if parts[-1] and length + 1 + len(line) > size:
            parts.append([])
            length = -1
        parts[-1].append(line)
        length += 1 + len(line)
    if len(parts) > most:
        parts = parts[:most]
        shown = sum(len(part) for part in parts)
        while True:
            tail = f"... {len(lines) - shown} more lines not shown"
            if not parts[-1] or len("\n".join([*parts[-1], tail])) <= size:
                break
            parts[-1].pop()
            shown -= 1
        parts[-1].append(tail)
    return ["\n".join(part) for part in parts]


def bots(settings: Settings) -> dict[str, tuple[BotUrl, frozenset[str]]]:
    """Every bot of the Telegram webhooks, by base URL, with the chats it answers."""
    found: dict[str, tuple[BotUrl, frozenset[str]]] = {}
    for webhook in settings.alerts.webhooks:
        if webhook.format != "telegram" or not webhook.chat_id:
            continue
        url = bot_url(webhook.url)
        key = url.base.get_secret_value()
        _, chats = found.get(key, (url, frozenset()))
        found[key] = (url, chats | {webhook.chat_id.strip()})
    return found


class TelegramCommands:
    """The commands of ``settings`` as an async context manager: on entry one reader task per
    bot starts, on exit they stop. Does nothing unless ``[telegram] commands`` is on."""

    def __init__(
        self,
        settings: Settings,
        record: Recorder,
        snapshot: Snapshot | None = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._settings = settings
        self._record = record
        self._snapshot = snapshot
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self.bots: list[CommandBot] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> TelegramCommands:
        settings = self._settings
        if not settings.telegram.commands:
            return self
        assert settings.guard.kill_switch_file is not None  # the config requires it
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        commands = Commands(settings.guard.kill_switch_file, self._snapshot, clock=self._clock)
        for url, chats in bots(settings).values():
            register_secret(url.token)  # masked in every log line, as a key's secret is
            offsets = OffsetFile(settings.audit.spool_dir / f"telegram-{url.bot_id}.offset")
            self.bots.append(CommandBot(
                BotApi(url, self._client), chats, commands, self._record, offsets,
                long_poll_s=settings.telegram.long_poll_s, clock=self._clock))
        self._tasks = [asyncio.create_task(bot.run(), name=bot.name) for bot in self.bots]
        for task in self._tasks:
            task.add_done_callback(_report_death)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
        self._tasks = []


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped: %s; Telegram commands are not read until a restart",
                  task.get_name(), type(task.exception()).__name__, exc_info=task.exception())


__all__: Sequence[str] = ["CommandBot", "Commands", "Reply", "TelegramCommands", "split"]
