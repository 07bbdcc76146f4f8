"""``guardbot audit report --since 24h --html out.html``: one page of a period for an auditor.

The page holds what ``audit summary`` reports (per account), every action of the period
(time, account, symbol, kind, amount, status, reason), the positions' closes, liquidations
and margin moved by others, the operators' commands, and a chart per position: mark,
liquidation price and margin over the period with the actions marked, drawn by the shared
chart code (``guardbot.view.chart``, as the live page and the backtest draw theirs).

It is self-contained so it opens from an email attachment on a machine without internet:
inline CSS, inline SVG, no script, no font, no image and no link to fetch.

The charts are drawn from the audit log alone: each action records the snapshot it was
decided on (mark, margin, liquidation price), an applied action moves the margin by its
amount, and a close records the position as the exchange last confirmed it. Between two
records the lines hold their last value, so a chart is as fine as the guard's activity.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Engine

from guardbot.audit import chain, queries
from guardbot.audit.ledger import CLOSES
from guardbot.domain import ActionKind
from guardbot.view import chart

# The observations that belong on a position's chart and in the report.
POSITION_KINDS = (*CLOSES, "margin_changed_by_others")
SUMMARY_COLUMNS = ("actions", "added", "reduced", "failures", "uncertain", "latency_mean_ms",
                   "latency_p99_ms", "dry_run_added", "dry_run_reduced")  # fmt: skip
STYLE = """body{font:14px system-ui,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin:28px 0 6px}h3{font-size:14px;margin:20px 0 4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #e5e7eb;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f3f4f6}td.n{text-align:right;
font-variant-numeric:tabular-nums}p.muted{color:#6b7280}svg{background:#fff;
border:1px solid #e5e7eb}"""

Position = tuple[str, str]  # (account id, symbol)


@dataclass(slots=True)
class ReportData:
    """What the page shows, read from the audit log in one go."""

    since: datetime
    until: datetime
    summary: list[queries.SummaryRow]
    actions: list[dict[str, Any]]
    applied: set[str]
    observations: list[dict[str, Any]]
    commands: list[dict[str, Any]]
    positions: list[Position] = field(default_factory=list)


def gather(engine: Engine, since: datetime, until: datetime) -> ReportData:
    """Everything of the span [``since``, ``until``) the page shows."""
    actions = list(queries.export_actions(engine, queries.ActionFilter(since=since,
                                                                       until=until)))
    observations = [o for o in queries.list_observations(engine, since, until, POSITION_KINDS)
                    if o["symbol"]]  # fmt: skip
    seen = {(a["account_id"], a["symbol"]) for a in actions}
    seen |= {(o["account_id"], o["symbol"]) for o in observations}
    return ReportData(
        since, until, queries.summarize(engine, since, "account", until), actions,
        queries.applied_actions(engine, since, until), observations,
        queries.list_commands(engine, since, until), sorted(seen))


def _text(value: Any) -> str:
    """A cell: money exact (plain decimal), times to the second in UTC."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return chain.decimal_text(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(table_id: str, headers: Sequence[str], rows: Iterable[Sequence[Any]],
           numeric: frozenset[int] = frozenset()) -> str:  # fmt: skip
    def cell(index: int, value: Any) -> str:
        opening = '<td class="n">' if index in numeric else "<td>"
        return f"{opening}{html.escape(_text(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(i, value) for i, value in enumerate(row)) + "</tr>"
                   for row in rows)  # fmt: skip
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _decimal(raw: Any) -> Decimal | None:
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def _ms(moment: datetime) -> float:
    return float(chain.to_ms(moment))


def position_series(data: ReportData, position: Position) -> chart.Series:
    """The chart of one position from its records in the period."""
    mark: list[chart.Point] = []
    liquidation: list[chart.Point] = []
    margin: list[chart.Point] = []
    markers: list[chart.Marker] = []
    crosses: list[chart.Cross] = []
    for action in data.actions:
        if (action["account_id"], action["symbol"]) != position:
            continue
        t = _ms(action["time"])
        mark.append((t, float(action["mark_price"])))
        if action["liquidation_price"] is not None:
            liquidation.append((t, float(action["liquidation_price"])))
        margin.append((t, float(action["margin"])))
        if action["status"] == "SKIPPED":
            continue  # refused: nothing was sent
        applied = action["id"] in data.applied
        if applied:
            sign = 1 if action["kind"] == ActionKind.ADD.value else -1
            margin.append((t, float(action["margin"] + sign * action["amount"])))
        markers.append(chart.Marker(
            t, float(action["margin"]), action["kind"], applied,
            f"{_text(action['time'])} {action['kind']} {_text(action['amount'])} "
            f"({action['status']}): {action['reason']}"))
    for seen in data.observations:
        if (seen["account_id"], seen["symbol"]) != position:
            continue
        t, detail = _ms(seen["time"]), seen["detail"]
        for name, series in (("last_mark", mark), ("last_liquidation_price", liquidation),
                             ("last_margin", margin), ("margin_after", margin)):
            value = _decimal(detail.get(name))
            if value is not None:
                series.append((t, float(value)))
        price = _decimal(detail.get("transfer_price")) or _decimal(detail.get("last_mark"))
        if seen["kind"] == "position_liquidated" and price is not None:
            crosses.append(chart.Cross(t, float(price), "liq",
                                       f"{_text(seen['time'])} liquidated at {price}"))
    for series in (mark, liquidation, margin):
        series.sort(key=lambda point: point[0])
    return chart.Series(start=_ms(data.since), end=_ms(data.until), mark=mark,
                        liquidation=liquidation, margin=margin, markers=markers,
                        crosses=crosses)


def render(data: ReportData, names: Mapping[str, str] | None = None, *,
           generated: datetime, source: str) -> str:  # fmt: skip
    """The page. ``names`` maps account ids to the config's names; ``source`` says which
    database it was read from (without a password)."""
    names = names or {}

    def who(account_id: str) -> str:
        return names.get(account_id, account_id)

    period = f"{_text(data.since)} to {_text(data.until)} UTC"
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>guardbot audit report, {html.escape(period)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>guardbot audit report</h1><p>{html.escape(period)}; generated "
        f"{html.escape(_text(generated))} UTC from {html.escape(source)}</p>",
        "<h2>Summary</h2><p class=\"muted\">As <code>guardbot audit summary</code>: actions "
        "decided in the period; added and reduced is margin the exchange confirmed or "
        "reconciliation found applied (dry runs apart); latency in ms.</p>",
    ]
    summary = [[who(row.key), *(getattr(row, name) for name in SUMMARY_COLUMNS)]
               for row in data.summary]
    if summary:
        parts.append(_table("summary", ["account", *SUMMARY_COLUMNS], summary,
                            frozenset(range(1, len(SUMMARY_COLUMNS) + 1))))
    else:
        parts.append("<p>No actions in the period.</p>")
    parts.append(f"<h2>Actions ({len(data.actions)})</h2>")
    if data.actions:
        parts.append(_table("actions", ["time", "account", "symbol", "kind", "amount",
                                        "status", "reason"], (
            [a["time"], who(a["account_id"]), a["symbol"], a["kind"], a["amount"],
             a["status"] + (" (dry run)" if a["dry_run"] and a["status"] != "DRY_RUN"
                            else ""), a["reason"]]
            for a in data.actions), frozenset({4})))  # fmt: skip
    if data.observations:
        parts.append(f"<h2>Closes, liquidations and margin moved by others "
                     f"({len(data.observations)})</h2>")
        parts.append(_table("observations", ["time", "account", "symbol", "what", "detail"], (
            [o["time"], who(o["account_id"]), o["symbol"], o["kind"], _detail(o["detail"])]
            for o in data.observations)))  # fmt: skip
    if data.commands:
        parts.append(f"<h2>Operators' commands ({len(data.commands)})</h2>")
        parts.append(_table("commands", ["time", "channel", "chat", "sender", "command",
                                         "result", "what came of it"], (
            [c["time"], c["channel"], c["chat_id"], c["sender"],
             f"/{c['command']} {c['arguments']}".strip(), c["result"], c["message"]]
            for c in data.commands)))  # fmt: skip
    parts.append(f"<h2>Positions ({len(data.positions)})</h2>")
    for position in data.positions:
        parts.append(f'<h3 class="position">{html.escape(who(position[0]))} '
                     f"{html.escape(position[1])}</h3>")
        series = position_series(data, position)
        if series.mark:
            parts.append(chart.position_chart(series, chart.CLOCK))
        else:  # only margin moved by others: nothing says where the price was
            parts.append('<p class="muted">No price recorded in the period (only margin '
                         "moved by others, in the table above).</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _detail(detail: Mapping[str, Any]) -> str:
    shown = {k: v for k, v in detail.items() if k != "guard_last"}
    return ", ".join(f"{k} {v}" for k, v in shown.items())
