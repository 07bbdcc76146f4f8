"""``guardbot check-config`` and the start-up errors of ``guardbot run``."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from guardbot.cli import main

ACCOUNT = """
[[accounts]]
name = "main"
account_id = "0x{ab}"
orderly_key = "ed25519:9C6hybhQ6Aycep9jaUnP6uL9ZYvDjUp1aSkFWPUFJtpj"
orderly_secret_env = "TEST_CHECK_SECRET"
""".replace("{ab}", "ab" * 32)


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    config = tmp_path / "guardbot.toml"
    config.write_text(text)
    config.chmod(0o600)
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)], env=env)
    return result.exit_code, result.output


def test_a_valid_config_is_described_without_its_secret(tmp_path: Path) -> None:
    code, output = check(tmp_path, ACCOUNT + '[[policies]]\nuse = "topup"\n',
                         {"TEST_CHECK_SECRET": "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"})
    assert code == 0, output
    assert "configuration OK" in output and "accounts: main" in output
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
        'target = "0.1" }\n', {"TEST_CHECK_SECRET": "x"})
    assert code != 0
    assert "policies.0" in output and "target" in output


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
