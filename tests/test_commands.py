"""``guardbot check-config`` and the start-up errors of ``guardbot run``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from guardbot import exits
from guardbot.audit import schema
from guardbot.audit.database import SqliteLock, create_audit_engine
from guardbot.cli import main
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

ACCOUNT = """
[[accounts]]
name = "main"
account_id = "0x{ab}"
orderly_key = "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"
orderly_secret_env = "TEST_CHECK_SECRET"
""".replace("{ab}", "ab" * 32)


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    config = tmp_path / "guardbot.toml"
    config.write_text("[health]\nenabled = false\n" + text)  # 9108 may be taken here
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)], env=env)
    return result.exit_code, result.output


def test_a_valid_config_is_described_without_its_secret(tmp_path: Path) -> None:
    code, output = check(tmp_path, ACCOUNT + '[[policies]]\nuse = "topup"\n',
                         {"TEST_CHECK_SECRET": "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"})
    assert code == 0, output
    assert "configuration OK" in output and "main" in output
    assert "4wBq" not in output


def test_unknown_keys_and_bad_values_name_the_key(tmp_path: Path) -> None:
    code, output = check(tmp_path, "[poll]\ninterval_s = -1\nspeed = 3\n")
    assert code != 0
    assert "poll.interval_s" in output and "poll.speed: unknown key" in output


def test_a_missing_secret_variable_is_a_config_error(tmp_path: Path) -> None:
    code, output = check(tmp_path, ACCOUNT, {"TEST_CHECK_SECRET": ""})
    assert code != 0
    assert "TEST_CHECK_SECRET is not set" in output


def test_a_bad_policy_parameter_stops_check_config(tmp_path: Path) -> None:
    code, output = check(
        tmp_path, ACCOUNT + '[[policies]]\nuse = "topup"\nparams = { trigger = "0.2", '
        'target = "0.1" }\n', {"TEST_CHECK_SECRET": SECRET})
    assert code == exits.USAGE
    assert output.startswith("Error: policies[1].params.target: must be above trigger")


def test_run_refuses_to_start_without_accounts(tmp_path: Path) -> None:
    config = tmp_path / "guardbot.toml"
    config.write_text(f'[audit]\nurl = "sqlite:///{tmp_path / "a.db"}"\n')
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code != 0
    assert "no [[accounts]] configured" in result.output


def test_a_readable_config_warning_is_a_json_log_line_when_logging_json(tmp_path: Path) -> None:
    config = tmp_path / "guardbot.toml"
    config.write_text("[health]\nenabled = false\n")  # no accounts: run stops right after
    config.chmod(0o644)
    result = CliRunner().invoke(main, ["--log-format", "json", "run", "--config", str(config)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if "readable by group" in line]
    assert len(lines) == 1, result.output
    record = json.loads(lines[0])
    assert record["level"] == "WARNING" and record["logger"] == "guardbot.commands"


# -- everything run checks, check-config checks: one line, the shared exit codes ----------

SECRET = "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"  # the secret of ACCOUNT's key


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def offline(tmp_path: Path) -> str:
    """An exchange nothing listens on, the health server off and a database in tmp_path."""
    port = closed_port()
    return (f'[exchange]\nrest_url = "http://127.0.0.1:{port}"\n'
            f'public_ws_url = "ws://127.0.0.1:{port}/ws/{{account_id}}"\n'
            f'private_ws_url = "ws://127.0.0.1:{port}/ws/{{account_id}}"\n'
            '[health]\nenabled = false\n'
            f'[audit]\nurl = "sqlite:///{tmp_path / "audit.db"}"\n'
            f'spool_dir = "{tmp_path / "spool"}"\n')


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def errors(result: Result) -> list[str]:
    """The error lines of stderr (``run`` logs there too)."""
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "guardbot.toml"
    config.write_text(text)
    config.chmod(0o600)
    return config


@pytest.mark.parametrize(
    ("secret", "extra", "expected"),
    [
        ("0OIl-not-base58", "",
         'Error: accounts[1] (name "main").orderly_secret_env: the orderly secret is not a'
         " base58 ed25519 seed of 32 or 64 bytes"),
        (generate_key()[1], "",
         'Error: accounts[1] (name "main").orderly_secret_env: the orderly secret does not'
         " belong to key ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"),
        (SECRET, '[exchange]\nrest_url = "ftp://api.example.com"\n',
         "Error: exchange.rest_url: must be a http or https URL, got 'ftp://api.example.com'"),
    ],
)
def test_check_config_and_run_refuse_what_run_would_refuse_in_one_line(
    tmp_path: Path, secret: str, extra: str, expected: str
) -> None:
    text = extra + ACCOUNT if extra else offline(tmp_path) + ACCOUNT
    config = write(tmp_path, text)
    for command in ("check-config", "run"):
        result = invoke(command, "--config", str(config), env={"TEST_CHECK_SECRET": secret})
        assert result.exit_code == exits.USAGE, result.output
        assert expected in result.stderr.splitlines()[0], result.stderr
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.output
        assert "code None" not in result.output and "Value error" not in result.output
        assert secret not in result.output or secret == SECRET
    assert not (tmp_path / "audit.db").exists(), "a bad config never creates the database"


def test_a_health_port_in_use_is_refused_by_check_config_and_run(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = offline(tmp_path).replace("enabled = false", f"port = {port}") + ACCOUNT
        config = write(tmp_path, text)
        for command in ("check-config", "run"):
            result = invoke(command, "--config", str(config),
                            env={"TEST_CHECK_SECRET": SECRET})
            assert result.exit_code == exits.USAGE, result.output
            assert result.stderr == (f"Error: health.port: 127.0.0.1:{port} is already in use"
                                     " (another guardbot, or choose another [health] port)\n")


def test_check_config_refuses_a_config_without_accounts(tmp_path: Path) -> None:
    result = invoke("check-config", "--config", str(write(tmp_path, offline(tmp_path))))
    assert result.exit_code == exits.USAGE
    assert result.stderr == "Error: no [[accounts]] configured: nothing to guard\n"


def test_a_bad_config_exits_2_in_every_command(tmp_path: Path) -> None:
    config = str(write(tmp_path, "[poll]\ninterval_s = -1\n" + ACCOUNT))
    for args in (["check-config", "--config", config], ["run", "--config", config],
                 ["status", "--config", config], ["audit", "list", "--config", config],
                 ["audit", "summary", "--config", config], ["db", "current", "--config", config]):
        result = invoke(*args, env={"TEST_CHECK_SECRET": SECRET})
        assert result.exit_code == exits.USAGE, (args, result.output)
        assert len(result.stderr.splitlines()) == 1 and "poll.interval_s" in result.stderr
        assert "Traceback" not in result.output


def test_run_gives_an_empty_sqlite_database_its_schema(tmp_path: Path) -> None:
    """The first run: the database does not exist yet; run creates it at the newest schema,
    then stops on the exchange nothing listens on (exit 4)."""
    config = write(tmp_path, offline(tmp_path) + ACCOUNT)
    result = invoke("run", "--config", str(config), env={"TEST_CHECK_SECRET": SECRET})
    assert result.exit_code == exits.UNREACHABLE, result.output
    (line,) = errors(result)
    assert "cannot reach the exchange" in line and "Traceback" not in result.output
    engine = create_audit_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    try:
        assert schema.current(engine) == schema.HEAD
    finally:
        engine.dispose()


def test_run_names_a_missing_database_folder(tmp_path: Path) -> None:
    text = offline(tmp_path).replace(str(tmp_path / "audit.db"), str(tmp_path / "typo" / "a.db"))
    result = invoke("run", "--config", str(write(tmp_path, text + ACCOUNT)),
                    env={"TEST_CHECK_SECRET": SECRET})
    assert result.exit_code == exits.DATABASE, result.output
    assert errors(result) == [f"Error: the folder of the audit database {tmp_path / 'typo'}"
                              "/a.db does not exist: create it, or fix audit.url"]


def test_run_refuses_an_out_of_date_schema_naming_the_upgrade_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url, "0001")
    config = write(tmp_path, offline(tmp_path) + ACCOUNT)
    result = invoke("run", "--config", str(config), env={"TEST_CHECK_SECRET": SECRET})
    assert result.exit_code == exits.DATABASE, result.output
    assert errors(result) == [f"Error: the audit database is at revision 0001, this guardbot"
                              f" needs {schema.HEAD}: run `guardbot db upgrade`"]
    assert result.output.count("guardbot db upgrade") == 1


def test_a_second_guard_on_the_same_sqlite_database_refuses_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths come from the config's folder, so the same config started from another
    folder finds the same database, and its lock (held here as the first guard would). The
    message names the first guard, not the health port it also holds."""
    etc = tmp_path / "etc"
    etc.mkdir()
    port = closed_port()
    first = SqliteLock(etc / "audit.db")
    health = socket.socket()  # the first guard's health server holds the port too
    health.bind(("127.0.0.1", 0))
    health.listen()
    write(etc, f'[exchange]\nrest_url = "http://127.0.0.1:{port}"\n[health]\n'
               f'port = {health.getsockname()[1]}\n[audit]\nurl = "sqlite:///audit.db"\n'
               + ACCOUNT)
    try:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        result = invoke("run", "--config", "../etc/guardbot.toml",
                        env={"TEST_CHECK_SECRET": SECRET})
    finally:
        first.close()
        health.close()
    assert result.exit_code == exits.DATABASE, result.output
    assert errors(result)[0].startswith(
        f"Error: another guardbot instance already uses {etc / 'audit.db'} (pid {os.getpid()}"
        f" on {socket.gethostname()} since ")
    assert not list(elsewhere.iterdir()), "nothing is created in the working directory"
    assert not (etc / "guardbot-spool").exists(), "refused before taking a spool"


# -- check-config --online against the simulator as a real server -----------------------


async def test_online_reports_each_accounts_key_scopes(sim: SimServer, tmp_path: Path) -> None:
    good_key, good_secret = generate_key()
    good = sim.engine.create_account(good_key, "read,trading", Decimal(1000))
    read_key, read_secret = generate_key()
    read_only = sim.engine.create_account(read_key, "read", Decimal(1000))
    text = f'[exchange]\nrest_url = "{sim.rest_url}"\n[health]\nenabled = false\n'
    for name, account_id, key, secret in (("main", good, good_key, good_secret),
                                          ("watch", read_only, read_key, read_secret)):
        text += (f'[[accounts]]\nname = "{name}"\naccount_id = "{account_id}"\n'
                 f'orderly_key = "{key}"\norderly_secret = "{secret}"\n')
    config = write(tmp_path, text)
    result = await asyncio.to_thread(invoke, "check-config", "--online", "--config", str(config))
    assert result.exit_code == exits.AUTH, result.output
    assert f'accounts[1] (name "main"): key {good_key}: scopes read,trading: OK' in result.stdout
    assert result.stderr == (f'accounts[2] (name "watch"): key {read_key}: scopes read: lacks'
                             " trading, which the guard needs\n")
    assert "configuration OK" not in result.stdout
    assert good_secret not in result.output and read_secret not in result.output


async def test_online_names_an_unregistered_key_and_passes_a_good_config(
    sim: SimServer, tmp_path: Path
) -> None:
    key, secret = generate_key()
    account_id = sim.engine.create_account(key, "read,trading", Decimal(1000))
    stranger_key, stranger_secret = generate_key()
    text = f'[exchange]\nrest_url = "{sim.rest_url}"\n[health]\nenabled = false\n'
    good = (f'[[accounts]]\nname = "main"\naccount_id = "{account_id}"\n'
            f'orderly_key = "{key}"\norderly_secret = "{secret}"\n')
    config = write(tmp_path, text + good)
    result = await asyncio.to_thread(invoke, "check-config", "--online", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("scopes read,trading: OK\nconfiguration OK\n")
    stranger = good.replace(key, stranger_key).replace(secret, stranger_secret)
    config = write(tmp_path, text + stranger)
    result = await asyncio.to_thread(invoke, "check-config", "--online", "--config", str(config))
    assert result.exit_code == exits.AUTH, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f'accounts[1] (name "main"): key {stranger_key}: the exchange'
                           " refused the key: authentication failed: code -1002")
