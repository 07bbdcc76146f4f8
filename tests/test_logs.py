from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import Iterator
from contextlib import redirect_stderr

import click
import pytest
from click.testing import CliRunner

from guardbot import cli, logs
from guardbot.logs import log_context, register_secret, setup_logging

# docs/exchange.md §2 test vector: a real-shaped ed25519 secret and its public key.
SECRET = "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"
PUBLIC_KEY = "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"
ACCOUNT_ID = "0x" + "ab12" * 16


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(logs.LEVEL_ENV, raising=False)
    monkeypatch.delenv(logs.FORMAT_ENV, raising=False)
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_names", {})
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    # The CLI's --log-level/--log-format write these for the config loaded after them; the
    # delenv above restores nothing when they were unset, and a leak made later commands'
    # stderr JSON at DEBUG (test_commands' --online tests failed after this module).
    os.environ.pop(logs.LEVEL_ENV, None)
    os.environ.pop(logs.FORMAT_ENV, None)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]


def test_json_logs_parse_line_by_line_with_context_fields() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("guardbot.executor")

    log.info("added %s USDC", "120.50", extra={"account": "main", "symbol": "PERP_ETH_USDC",
                                                "action_id": 42})
    log.warning("reason spans\ntwo lines")
    try:
        raise RuntimeError("exchange went away")
    except RuntimeError:
        log.exception("call failed", extra={"account": "main"})
    log.debug("not at INFO")

    first, second, third = json_lines(out)
    assert first["message"] == "added 120.50 USDC"
    assert first["level"] == "INFO"
    assert first["logger"] == "guardbot.executor"
    assert (first["account"], first["symbol"], first["action_id"]) == (
        "main", "PERP_ETH_USDC", 42)
    assert str(first["ts"]).endswith("Z")
    assert second["message"] == "reason spans\ntwo lines"
    assert "account" not in second
    assert third["message"] == "call failed"
    assert "RuntimeError: exchange went away" in str(third["exc"])


def test_bound_context_follows_tasks_and_extra_wins() -> None:
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    log = logging.getLogger("guardbot.test")

    async def worker() -> None:
        log.info("in task")

    async def scenario() -> None:
        with log_context(account="main", symbol="PERP_BTC_USDC"):
            await asyncio.create_task(worker())
            log.info("explicit", extra={"symbol": "PERP_ETH_USDC", "action_id": "a-1"})
        log.info("outside")

    asyncio.run(scenario())
    in_task, explicit, outside = json_lines(out)
    assert (in_task["account"], in_task["symbol"]) == ("main", "PERP_BTC_USDC")
    assert (explicit["symbol"], explicit["action_id"]) == ("PERP_ETH_USDC", "a-1")
    assert "account" not in outside
    with pytest.raises(TypeError, match="log_context takes only"), log_context(secret="x"):
        pass


def test_text_format_is_one_readable_line_with_context() -> None:
    out = io.StringIO()
    setup_logging("DEBUG", "text", stream=out)
    logging.getLogger("guardbot.book").debug(
        "stale for %.1f s", 16.25, extra={"account": "main", "symbol": "PERP_ETH_USDC"}
    )
    (line,) = out.getvalue().splitlines()
    assert line.endswith(
        " DEBUG guardbot.book: stale for 16.2 s [account=main symbol=PERP_ETH_USDC]"
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_everywhere(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("INFO", fmt, stream=out)
    register_secret("Not-Key-Shaped-Secret!")
    log = logging.getLogger("guardbot.exchange")

    log.info("bare %s", SECRET)
    log.info("prefixed ed25519:%s", SECRET)
    log.info("settings orderly_secret='%s' x", "abc-short-but-named")
    log.info("registered %s", "Not-Key-Shaped-Secret!", extra={"account": SECRET})
    log.info("public %s and account %s", PUBLIC_KEY, ACCOUNT_ID)
    try:
        raise ValueError(f"bad secret {SECRET}")
    except ValueError:
        log.exception("boom")

    text = out.getvalue()
    for leaked in (SECRET, "abc-short-but-named", "Not-Key-Shaped-Secret!"):
        assert leaked not in text
    # Public keys look exactly like secrets, so they are masked too; account ids are not.
    assert PUBLIC_KEY not in text
    assert ACCOUNT_ID in text
    assert text.count(logs.REDACTED) >= 7


def test_prose_about_secrets_is_not_redacted() -> None:
    out = io.StringIO()
    setup_logging("INFO", "text", stream=out)
    logging.getLogger("guardbot.config").warning(
        "guardbot.toml is readable by others; it may hold secrets: chmod 600 it")
    logging.getLogger("guardbot.config").warning("secret_key=abcdef123 db_password: hunter2x")
    text = out.getvalue()
    assert "secrets: chmod 600 it" in text
    assert "abcdef123" not in text and "hunter2x" not in text


def test_setup_again_replaces_the_handler_and_rejects_bad_values() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", "text", stream=first)
    setup_logging("WARNING", "json", stream=second)
    logging.getLogger("guardbot.x").info("dropped")
    logging.getLogger("guardbot.x").warning("kept")
    assert first.getvalue() == ""
    assert [entry["message"] for entry in json_lines(second)] == ["kept"]
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        setup_logging("INFO", "yaml")
    with pytest.raises(ValueError, match="log level must be one of"):
        setup_logging("LOUD", "text")


@click.command()
def emit() -> None:
    """A stand-in sub-command that logs one line."""
    logging.getLogger("guardbot.emit").info("hello", extra={"account": "main"})


def test_cli_log_format_json_configures_logging_and_overrides_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "emit", f"{__name__}:emit")
    result = CliRunner().invoke(cli.main, ["--log-format", "json", "--log-level", "debug", "emit"])
    assert result.exit_code == 0, result.output
    (entry,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert (entry["message"], entry["account"]) == ("hello", "main")
    # The config's [log] section is overridden through its environment variables.
    from guardbot.config import parse_config

    assert parse_config({"log": {"format": "text", "level": "ERROR"}}).log.format == "json"
    assert parse_config({}).log.level == "DEBUG"


def test_cli_rejects_an_unknown_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "emit", f"{__name__}:emit")
    result = CliRunner().invoke(cli.main, ["--log-format", "xml", "emit"])
    assert result.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in result.output


def test_default_stream_follows_stderr_redirection(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "text")
    with redirect_stderr(io.StringIO()) as elsewhere:
        logging.getLogger("guardbot.x").info("redirected")
    logging.getLogger("guardbot.x").info("back")
    assert "redirected" in elsewhere.getvalue()
    assert "back" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_accounts_are_named_as_the_config_names_them(fmt: str) -> None:
    out = io.StringIO()
    setup_logging("INFO", fmt, stream=out)
    logs.name_accounts({ACCOUNT_ID: "main"})
    other = "0x" + "cd" * 32
    logging.getLogger("guardbot.feeds.poller").warning(
        "poll of %s failed; %s unknown", ACCOUNT_ID.upper().replace("0X", "0x"), other,
        extra={"account": ACCOUNT_ID})
    written = out.getvalue()
    assert ACCOUNT_ID not in written.lower()
    assert f"poll of main failed; {other} unknown" in written
    if fmt == "json":
        assert json_lines(out)[0]["account"] == "main"
    assert logs.account_name(ACCOUNT_ID) == "main" and logs.account_name(other) == other
