"""Logging set-up: human text by default, JSON lines for machines, secrets never written.

Every record may carry ``account``, ``symbol`` and ``action_id``: pass them as ``extra=`` or
bind them for a whole block (they follow asyncio tasks, being context variables)::

    log = logging.getLogger(__name__)
    with log_context(account="main", symbol="PERP_ETH_USDC"):
        log.info("added %s USDC", amount, extra={"action_id": action.id})

Text:  ``2026-11-22T01:06:01.123Z INFO guardbot.executor: added 120 USDC [account=main ...]``
JSON:  ``{"ts": "2026-11-22T01:06:01.123Z", "level": "INFO", "logger": "guardbot.executor",
"message": "added 120 USDC", "account": "main", "symbol": "PERP_ETH_USDC", "action_id": 42}``

Secrets are kept out by construction (``SecretStr``); the redaction filter is defence in depth.
It masks every value registered with ``register_secret``, any ``secret=...``-style pair, and any
bare base58 string the length of a 32- or 64-byte ed25519 key. Orderly public keys have the same
shape as secrets, so they are masked too: accounts are named by ``account``, not by key.

Accounts are named as the config names them: every account id registered with
``name_accounts`` is written as its name, in the message and in the ``account`` field (the
66-character ids stay in the audit log). Alerts and metric labels use ``account_name`` too.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final, Literal, TypeVar

import click

CONTEXT_FIELDS: Final = ("account", "symbol", "action_id")
REDACTED: Final = "[redacted]"
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS: Final = ("text", "json")
# The config's own environment overrides (guardbot.config), so that a command-line choice also
# wins over the [log] section of the config file the command loads afterwards.
LEVEL_ENV: Final = "GUARDBOT__LOG__LEVEL"
FORMAT_ENV: Final = "GUARDBOT__LOG__FORMAT"

_context: contextvars.ContextVar[tuple[tuple[str, object], ...]] = contextvars.ContextVar(
    "guardbot_log_context", default=()
)
_secrets: set[str] = set()
_names: dict[str, str] = {}
# An Orderly account id: 0x and 64 hex digits (docs/exchange.md §2).
_ACCOUNT_ID = re.compile(r"(?<![0-9A-Za-z])0x[0-9a-fA-F]{64}(?![0-9A-Za-z])")

_BASE58 = "1-9A-HJ-NP-Za-km-z"
# 32 bytes encode to 43-44 base58 characters, 64 bytes to 87-88 (docs/exchange.md §2).
_KEY_SHAPED = re.compile(
    rf"(?<![0-9A-Za-z])(?:ed25519:)?(?:[{_BASE58}]{{87,88}}|[{_BASE58}]{{43,44}})(?![0-9A-Za-z])"
)
_SECRET_PAIR = re.compile(
    # A key naming a secret (orderly_secret, secret_key, db_password), not prose such as
    # "it may hold secrets: chmod 600 it".
    r"(?i)(\b[\w-]*(?:secret|private_key|password)(?:[_-][\w-]*)?\b[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"',}]+)"
)


def register_secret(value: str) -> None:
    """Mask this exact string wherever it would appear in a log line (call it for every
    resolved ``orderly_secret`` at start-up)."""
    value = value.strip()
    if value:
        _secrets.add(value)
        if value.startswith("ed25519:"):
            _secrets.add(value.removeprefix("ed25519:"))


def name_accounts(names: Mapping[str, str]) -> None:
    """Name these accounts (id -> config name) wherever a human reads about them: log lines,
    alerts, metric labels. Called by the daemon at start-up."""
    _names.update({account_id.lower(): name for account_id, name in names.items()})


def account_name(account_id: str) -> str:
    """The config name of an account id registered with ``name_accounts``, else the id."""
    return _names.get(account_id.lower(), account_id)


def _named(text: str) -> str:
    if not _names or "0x" not in text:
        return text
    return _ACCOUNT_ID.sub(lambda m: _names.get(m.group(0).lower(), m.group(0)), text)


def redact(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[redacted]``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _SECRET_PAIR.sub(lambda m: m.group(1) + REDACTED, text)
    return _KEY_SHAPED.sub(REDACTED, text)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach ``account`` / ``symbol`` / ``action_id`` to every record logged in this block
    (and in tasks created inside it). An explicit ``extra=`` wins over the context."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"log_context takes only {', '.join(CONTEXT_FIELDS)}, not {unknown}")
    token = _context.set(tuple({**dict(_context.get()), **fields}.items()))
    try:
        yield
    finally:
        _context.reset(token)


class RedactingFilter(logging.Filter):
    """Fills in the bound context fields and rewrites message and traceback with secrets
    masked. Installed on the handler, so it sees records from every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        record.msg = redact(_named(record.getMessage()))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(_named(value)))
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> [account=.. symbol=.. action_id=..]``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        context = " ".join(
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        if context:
            line += f" [{context}]"
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the context fields
    that are set, and ``exc`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # ensure_ascii keeps every line 7-bit clean; newlines inside values are escaped, so
        # one record is always exactly one line.
        return json.dumps(entry, default=str)


class _GuardbotHandler(logging.StreamHandler[IO[str]]):
    """The handler ``setup_logging`` owns (calling it again replaces it). Without an explicit
    stream it writes to whatever ``sys.stderr`` is at each record, so it follows redirection
    (click's test runner, pytest's capture) instead of writing to a stale, closed stream."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def setup_logging(
    level: str = "INFO",
    fmt: Literal["text", "json"] | str = "text",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr by default) as text or JSON lines, at
    ``level`` and above, through the redaction filter. Calling it again replaces the previous
    set-up (the CLI sets logging early; the daemon re-applies the config's ``[log]``).
    Raises ``ValueError`` for an unknown level or format."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GuardbotHandler)]:
        root.removeHandler(old)
        old.close()
    handler = _GuardbotHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter (one line per HTTP request) would drown the guard's own lines.
    for noisy in ("httpx", "httpcore", "websockets", "aiohttp.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler


F = TypeVar("F", bound=Callable[..., Any])


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        os.environ[LEVEL_ENV if param.name == "log_level" else FORMAT_ENV] = value
    if param.name == "log_format":  # processed last: both choices are known now
        setup_logging(os.environ.get(LEVEL_ENV, "INFO"), os.environ.get(FORMAT_ENV, "text"))


def log_options(command: F) -> F:
    """``--log-level`` and ``--log-format`` for the ``guardbot`` group. They configure logging
    before any sub-command runs and override the config file's ``[log]`` section (through its
    environment variables ``GUARDBOT__LOG__LEVEL`` / ``GUARDBOT__LOG__FORMAT``)."""
    command = click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        envvar=FORMAT_ENV,
        expose_value=False,
        callback=_remember,
        help="text (default) or json (one JSON object per line).",
    )(command)
    return click.option(
        "--log-level",
        type=click.Choice(LEVELS, case_sensitive=False),
        envvar=LEVEL_ENV,
        expose_value=False,
        is_eager=True,
        callback=_remember,
        help="DEBUG, INFO (default), WARNING or ERROR.",
    )(command)


class Once:
    """Says a thing at most once per ``every_ms`` per topic (a refusal, a stale position):
    the guard re-evaluates on every mark tick and must not repeat itself each time."""

    def __init__(self, every_ms: int, logger: logging.Logger) -> None:
        self._every_ms = every_ms
        self._logger = logger
        self._said: dict[tuple[str, ...], int] = {}

    def warn(self, topic: tuple[str, ...], now_ms: int, message: str, *args: object) -> bool:
        """Log ``message`` as a warning unless ``topic`` was said within the interval;
        returns whether it was said (callers audit or alert only then)."""
        last = self._said.get(topic)
        if last is not None and now_ms - last < self._every_ms:
            return False
        self._said[topic] = now_ms
        self._logger.warning(message, *args)
        return True
