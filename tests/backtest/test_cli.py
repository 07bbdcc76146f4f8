"""``guardbot backtest`` from the command line: output formats and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from guardbot.cli import main

CONFIG = '[[policies]]\nuse = "topup"\n\n[[policies]]\nuse = "sweep"\n'


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "guardbot.toml"
    path.write_text(CONFIG)
    return path


def test_json_for_one_path_at_two_speeds(config: Path) -> None:
    result = CliRunner().invoke(main, ["backtest", "--config", str(config), "--path", "crash",
                                       "--speed", "1", "--speed", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [(s["path"], s["speed"]) for s in data["scenarios"]] == [("crash", 1.0),
                                                                    ("crash", 2.0)]


def test_a_param_prints_the_trade_off(config: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "backtest", "--config", str(config), "--path", "crash", "--lost", "0.3",
        "--param", "topup.trigger=0.04,0.05", "--chart", str(tmp_path / "charts")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("SETTINGS") and len(lines) == 3
    assert lines[1].startswith("topup.trigger=0.04") and lines[2].startswith("topup.trigger=0.05")
    assert (tmp_path / "charts" / "topup.trigger_0.05" / "crash-x1.html").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--book", "nowhere.toml"], "cannot read the book"),
    (["--path", "moon"], "unknown path 'moon'"),
    (["--param", "budgets.cooldown_s=x"], "budgets.cooldown_s=x"),
    (["--param", "topup.trigger=0.5"], "target"),
    (["--json", "--csv"], "not both"),
])
def test_bad_input_is_one_line_and_exit_2(config: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["backtest", "--config", str(config), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[budgets]\nper_action = -1\n[nonsense]\n")
    result = CliRunner().invoke(main, ["backtest", "--config", str(bad)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "budgets.per_action" in result.output
