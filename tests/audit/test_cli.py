"""``guardbot audit`` and ``guardbot db`` through the real command group, on both backends."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import update

from guardbot import exits
from guardbot.audit import queries, schema
from guardbot.audit.database import create_audit_engine
from guardbot.cli import main

from .conftest import ACCOUNT, OTHER


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_json_has_the_documented_fields(url: str, history: dict[str, str]) -> None:
    result = run("audit", "list", "--db", url, "--account", ACCOUNT, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [row["id"] for row in rows] == [history[n] for n in ("a6", "a3", "a2", "a1")]
    required = {"id", "time", "account_id", "symbol", "margin_mode", "policy", "kind",
                "amount", "status", "reason"}  # fmt: skip
    assert required <= set(rows[0])
    assert rows[2]["amount"] == "20" and rows[2]["status"] == "REJECTED"
    assert rows[3]["time"] == "2025-11-22T08:26:40.000Z"


def test_list_csv_and_table(url: str, history: dict[str, str]) -> None:
    result = run("audit", "list", "--db", url, "--kind", "add", "--status", "uncertain",
                 "--format", "csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(csv.DictReader(io.StringIO(result.stdout))) == []
    result = run("audit", "list", "--db", url, "--policy", "sweep", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["id"], r["amount"], r["status"]) for r in rows] == [
        (history["a6"], "2", "FAILED"), (history["a3"], "5", "SUCCEEDED")]  # fmt: skip
    table = run("audit", "list", "--db", url, "--limit", "1").stdout.splitlines()
    assert table[0].split()[:3] == ["id", "time", "account_id"]
    assert len(table) == 2 and table[1].startswith(history["a6"])


def test_list_since_and_until(url: str, history: dict[str, str]) -> None:
    result = run("audit", "list", "--db", url, "--since", "2025-11-23",
                 "--until", "2025-11-23T09:30:00Z", "--format", "json")  # fmt: skip
    assert [row["id"] for row in json.loads(result.stdout)] == [history["a5"], history["a4"]]
    recent = run("audit", "list", "--db", url, "--since", "1h", "--format", "json")
    assert json.loads(recent.stdout) == []  # the history is from 2025


def test_show(url: str, history: dict[str, str]) -> None:
    result = run("audit", "show", history["a4"][:20], "--db", url, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["action"]["id"] == history["a4"]
    assert data["action"]["margin"] == "150"
    assert [e["kind"] for e in data["events"]] == ["INTENT", "SENT", "UNCERTAIN", "RECONCILED"]
    text = run("audit", "show", history["a4"], "--db", url).stdout
    assert "liquidation_price: 3150.5" in text and "UNCERTAIN" in text


def test_summary_formats(url: str, history: dict[str, str]) -> None:
    result = run("audit", "summary", "--db", url, "--by", "day", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["day"], r["actions"], r["added"], r["reduced"], r["dry_run_added"])
            for r in rows] == [("2025-11-22", 3, "10", "5", "0"),
                               ("2025-11-23", 3, "7", "0", "3")]  # fmt: skip
    table = run("audit", "summary", "--db", url).stdout.splitlines()
    assert table[0].split() == ["account", "actions", "added", "reduced", "failures",
                                "uncertain", "latency_mean_ms", "latency_p99_ms",
                                "dry_run_added", "dry_run_reduced"]  # fmt: skip
    assert len(table) == 3


def test_export_csv_and_jsonl(url: str, history: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "export.csv"
    result = run("audit", "export", "--db", url, "--format", "csv", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["id"] for r in rows] == [history[f"a{n}"] for n in range(1, 7)]
    assert rows[0]["mark_price"] == "3012.34" and rows[0]["data_age_ms"] == "240"
    lines = run("audit", "export", "--db", url, "--format", "jsonl", "--account", OTHER)
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert [(r["id"], r["dry_run"]) for r in records] == [
        (history["a4"], False), (history["a5"], True)]  # fmt: skip
    assert Decimal(records[0]["amount"]) == 7


def test_verify_ok_then_broken(url: str, history: dict[str, str]) -> None:
    result = run("audit", "verify", "--db", url)
    assert result.exit_code == 0 and result.stdout.startswith("OK: 19 events in 2 accounts")
    engine = create_audit_engine(url)
    with engine.begin() as connection:
        connection.execute(
            update(queries.ACTIONS)
            .where(queries.ACTIONS.c.id == history["a1"])
            .values(reason="nothing to see")
        )
    engine.dispose()
    result = run("audit", "verify", "--db", url)
    assert result.exit_code == 1
    assert result.stdout.startswith(f"BROKEN: account {ACCOUNT}, event seq 1")
    assert history["a1"] in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "list", "--account", "0xnobody"], "unknown account 0xnobody"),
        (["audit", "list", "--since", "last tuesday"], "'last tuesday' is not a time"),
        (["audit", "list", "--until", "2025-13-01"], "is not a time"),
        (["audit", "list", "--format", "xml"], "'xml' is not one of"),
        (["audit", "export", "--format", "xlsx"], "'xlsx' is not one of"),
        (["audit", "export"], "Missing option '--format'"),
        (["audit", "summary", "--by", "week"], "'week' is not one of"),
        (["audit", "list", "--limit", "0"], "--limit"),
        (["audit", "list", "--since", "2025-11-23", "--until", "2025-11-22"], "before --until"),
        (["audit", "show", "ffff"], "no action has id 'ffff'"),
        (["audit", "verify", "--account", "0xnobody"], "unknown account"),
    ],
)
def test_bad_arguments_get_one_line(
    url: str, history: dict[str, str], args: list[str], message: str
) -> None:
    result = run(*args, "--db", url)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_unusable_databases_get_one_line(empty_url: str, tmp_path: Path) -> None:
    if empty_url.startswith("sqlite"):
        (tmp_path / "audit.db").touch()  # an empty file: a database without the schema
    cases = [
        (["--db", empty_url], "run `guardbot db upgrade`", exits.DATABASE),
        (["--db", "mysql://x/y"], "unsupported audit database", exits.USAGE),
        (["--db", "postgresql+psycopg://postgres@127.0.0.1:1/x"], "cannot read the audit",
         exits.DATABASE),
        (["--db", "sqlite:///x.db", "--config", "g.toml"], "not both", exits.USAGE),
        (["--config", str(tmp_path / "missing.toml")], "cannot read the config file",
         exits.USAGE),
    ]
    for options, message, code in cases:
        result = run("audit", "list", *options)
        assert result.exit_code == code, (options, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (options, lines)
        assert schema.MIGRATIONS_ENV not in lines[0]


@pytest.mark.parametrize("args", [["audit", "list"], ["audit", "summary"], ["audit", "verify"],
                                  ["audit", "show", "abc"], ["db", "current"],
                                  ["db", "downgrade", "base"]])
def test_read_only_commands_never_create_a_missing_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "typo.db"
    for options in (["--db", f"sqlite:///{missing}"], []):  # [] is the default audit.url
        result = run(*args, *options)
        assert result.exit_code == exits.DATABASE, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("Error: the audit database ") and "does not exist" in line
        assert list(tmp_path.iterdir()) == [], "nothing was created"


def test_huge_ages_are_refused_in_one_line(url: str) -> None:
    for args in (["audit", "list", "--since", "1000000d"],
                 ["audit", "summary", "--since", "99999999999w"]):
        result = run(*args, "--db", url)
        assert result.exit_code == exits.USAGE, result.output
        (line,) = result.stderr.splitlines()
        assert "reaches before year 1" in line


def test_an_ambiguous_id_prefix_lists_the_candidates(url: str, history: dict[str, str]) -> None:
    ids = sorted(history.values())
    prefix = ids[0][:next(i for i, chars in enumerate(zip(*ids, strict=False))
                          if len(set(chars)) > 1)]
    result = run("audit", "show", prefix, "--db", url)
    assert result.exit_code == exits.USAGE
    (line,) = result.stderr.splitlines()
    assert f"several actions have ids starting {prefix!r}: " in line
    assert all(action_id in line for action_id in ids) and "give more of it" in line


def test_summary_until_excludes_later_actions(url: str, history: dict[str, str]) -> None:
    """a1-a3 fall on the first UTC day, a4-a6 on the next (the history's table)."""
    day_two = "2025-11-23"
    before = json.loads(run("audit", "summary", "--db", url, "--until", day_two,
                            "--format", "json").stdout)
    assert {row["account"]: row["actions"] for row in before} == {ACCOUNT: 3}
    after = json.loads(run("audit", "summary", "--db", url, "--since", day_two,
                           "--format", "json").stdout)
    assert {row["account"]: row["actions"] for row in after} == {ACCOUNT: 1, OTHER: 2}
    bad = run("audit", "summary", "--db", url, "--since", day_two, "--until", "2025-11-22")
    assert bad.exit_code == exits.USAGE and "--since must be before --until" in bad.stderr


def test_db_commands(empty_url: str, tmp_path: Path) -> None:
    if empty_url.startswith("sqlite"):
        (tmp_path / "audit.db").touch()
    assert run("db", "current", "--db", empty_url).stdout.startswith("(empty) (needs")
    result = run("db", "upgrade", "--db", empty_url)
    assert result.exit_code == 0 and result.stdout.strip().endswith(f"is at revision {schema.HEAD}")
    assert run("db", "current", "--db", empty_url).stdout.strip() == f"{schema.HEAD} (up to date)"
    assert run("db", "downgrade", "base", "--db", empty_url).exit_code == 0
    missing = run("db", "upgrade", "--db", empty_url, "--migrations", str(tmp_path / "none"))
    assert missing.exit_code == exits.DATABASE
    assert "GUARDBOT_MIGRATIONS" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_config_file_selects_the_database(url: str, history: dict[str, str],
                                          tmp_path: Path) -> None:  # fmt: skip
    config = tmp_path / "guardbot.toml"
    config.write_text(f'[audit]\nurl = "{url}"\n')
    result = run("audit", "list", "--config", str(config), "--format", "json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 6
