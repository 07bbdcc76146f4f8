"""``guardbot audit report``: one self-contained page, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from guardbot import exits
from guardbot.audit import queries
from guardbot.audit.database import create_audit_engine
from guardbot.audit.store import AuditLog, CommandRecord
from guardbot.audit.tables import ACTIONS, OUTCOMES
from guardbot.cli import main
from guardbot.clock import ManualClock

from .conftest import ACCOUNT, DAY, HOUR, OTHER, T0

SPAN = ["--since", "2025-11-22", "--until", "2025-11-24"]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class Tables(HTMLParser):
    """The page's tables (by id: rows of cell texts), its charts and headings, and every
    attribute that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.svgs = 0
        self.positions: list[str] = []
        self.fetching: list[str] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._h3 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "action", "data", "poster") or (
                    value and re.search(r"url\(|https?:|//", value) and name != "xmlns"):
                self.fetching.append(f"{tag} {name}={value}")
        if tag == "table":
            self._table = dict(attrs).get("id") or "?"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "svg":
            self.svgs += 1
        elif tag == "h3":
            self._h3 = True
            self.positions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "h3":
            self._h3 = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._h3:
            self.positions[-1] += data


def parsed(path: Path) -> Tables:
    page = path.read_text(encoding="utf-8")
    tables = Tables()
    tables.feed(page)
    assert not re.search(r"<script|@import|url\(|<link|<img|<iframe|<object", page, re.I)
    assert tables.fetching == [], "nothing on the page fetches anything"
    return tables


async def add_closes_and_a_command(url: str, tmp_path: Path) -> None:
    clock = ManualClock(start_ms=T0 + DAY + 3 * HOUR)
    log = await AuditLog.open(url, tmp_path / "more-spool", clock=clock)
    await log.start_run("0.1.0", "cafe", "host-1")
    await log.record_observation(OTHER, "PERP_ETH_USDC", "position_liquidated", {
        "transfer_price": "2990.5", "last_mark": "2991", "last_margin": "40",
        "last_liquidation_price": "2990", "guard_last": "[]"})
    await log.record_observation(ACCOUNT, "PERP_SOL_USDC", "margin_changed_by_others", {
        "margin_before": "10", "margin_after": "25", "change": "15"})
    await log.record_command(CommandRecord(
        channel="telegram", chat_id="-100200300", sender="@alice (id 42)", command="pause",
        arguments="<b>wild</b>", result="done", message="paused"))
    await log.aclose()


async def test_the_report_is_one_offline_page_with_a_chart_per_position(
    url: str, history: dict[str, str], tmp_path: Path
) -> None:
    await add_closes_and_a_command(url, tmp_path)
    out = tmp_path / "report.html"
    result = run("audit", "report", "--db", url, *SPAN, "--html", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {out}: 6 actions, 4 positions\n"
    page = parsed(out)
    expected = {f"{ACCOUNT} PERP_BTC_USDC", f"{ACCOUNT} PERP_ETH_USDC",
                f"{ACCOUNT} PERP_SOL_USDC", f"{OTHER} PERP_ETH_USDC"}
    assert set(page.positions) == expected and len(page.positions) == 4
    assert page.svgs == 3, "one chart per position with a price in the period"
    assert "No price recorded in the period" in out.read_text(), "SOL: margin moved only"
    actions = page.tables["actions"]
    assert actions[0] == ["time", "account", "symbol", "kind", "amount", "status", "reason"]
    assert [row[4] for row in actions[1:]] == ["10", "20", "5", "7", "3", "2"]
    assert actions[2][5] == "REJECTED" and actions[1][0] == "2025-11-22 08:26:40"
    commands = page.tables["commands"]
    assert commands[1][4] == "/pause <b>wild</b>", "free text is escaped, shown as typed"
    assert "<b>wild</b>" not in out.read_text() and "&lt;b&gt;wild" in out.read_text()
    assert any("position_liquidated" in row for row in page.tables["observations"])
    text = out.read_text()
    assert "liquidated at 2990.5" in text, "the liquidation is marked on its chart"


async def test_the_summary_figures_are_the_audit_rows(
    url: str, history: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    assert run("audit", "report", "--db", url, *SPAN, "--html", str(out)).exit_code == 0
    rows = parsed(out).tables["summary"]
    header, body = rows[0], rows[1:]
    shown = {row[0]: dict(zip(header, row, strict=True)) for row in body}
    # The same figures counted straight from the rows, independently of the summary query.
    engine = create_audit_engine(url)
    with engine.connect() as connection:
        actions = connection.execute(select(ACTIONS)).all()
        outcomes = connection.execute(select(OUTCOMES)).all()
    engine.dispose()
    for account in (ACCOUNT, OTHER):
        mine = [a for a in actions if a.account_id == account]
        applied = {o.action_id for o in outcomes if o.applied}
        moved = {kind: sum((a.amount for a in mine if a.id in applied and not a.dry_run
                            and a.kind == kind), Decimal(0)) for kind in ("ADD", "REDUCE")}
        failures = sum(1 for o in outcomes if o.account_id == account
                       and o.kind in ("REJECTED", "FAILED"))
        assert shown[account]["actions"] == str(len(mine))
        assert Decimal(shown[account]["added"]) == moved["ADD"]
        assert Decimal(shown[account]["reduced"]) == moved["REDUCE"]
        assert shown[account]["failures"] == str(failures)
    assert shown[ACCOUNT]["added"] == "10" and shown[ACCOUNT]["reduced"] == "5"
    assert shown[OTHER]["added"] == "7" and shown[OTHER]["dry_run_added"] == "3"
    engine = create_audit_engine(url)
    summary = {row.key: row for row in queries.summarize(
        engine, datetime(2025, 11, 22, tzinfo=UTC), "account",
        datetime(2025, 11, 24, tzinfo=UTC))}  # fmt: skip
    engine.dispose()
    assert shown[ACCOUNT]["latency_p99_ms"] == f"{summary[ACCOUNT].latency_p99_ms:.1f}"


async def test_names_from_the_config_and_an_empty_period(
    url: str, history: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "guardbot.toml"
    config.write_text(
        f'[audit]\nurl = "{url}"\n'
        f'[[accounts]]\nname = "main"\naccount_id = "{ACCOUNT}"\n'
        f'orderly_key = "ed25519:{"1" * 44}"\norderly_secret_env = "UNUSED"\n')
    out = tmp_path / "named.html"
    assert run("audit", "report", "--config", str(config), *SPAN, "--html",
               str(out)).exit_code == 0
    page = parsed(out)
    assert {row[0] for row in page.tables["summary"][1:]} == {"main", OTHER}
    assert "main PERP_ETH_USDC" in page.positions

    empty = tmp_path / "empty.html"
    result = run("audit", "report", "--db", url, "--html", str(empty))  # the last 24 h
    assert result.output.endswith("0 actions, 0 positions\n")
    page = parsed(empty)
    assert page.svgs == 0 and "No actions in the period." in empty.read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "'yesterday' is not a time"),
    (["--since", "2025-11-24", "--until", "2025-11-22"], "--since must be before --until"),
    (["--html", "/nonexistent-folder/out.html"], "cannot write /nonexistent-folder/out.html: "
     "No such file or directory"),
])
def test_bad_arguments_are_one_line(url: str, tmp_path: Path, args: list[str],
                                    message: str) -> None:  # fmt: skip
    if "--html" not in args:
        args = [*args, "--html", str(tmp_path / "x.html")]
    result = run("audit", "report", "--db", url, *args)
    assert result.exit_code == exits.USAGE
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_folder_as_the_page_is_refused(url: str, tmp_path: Path) -> None:
    result = run("audit", "report", "--db", url, "--html", str(tmp_path))
    assert result.exit_code == exits.USAGE
    assert "Error:" in result.output and "Traceback" not in result.output
