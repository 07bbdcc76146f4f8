"""The live page, the login form and the page of one audit record: self-contained HTML.

Everything is inline (style, script; charts are SVG the server draws, ``guardbot.view.chart``):
no CDN, no build step, so the page works on a box without internet. The script opens the
pushed updates (``EventSource("/view/events")``), renders each state it receives with DOM
calls (``textContent``: a reason or a plugin's message is never parsed as HTML) and fetches a
position's chart again only when its ``chart_rev`` changed.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from guardbot.view.state import epoch_ms

STYLE = """
body{font:14px system-ui,sans-serif;margin:16px 24px;color:#111;background:#f9fafb}
h1{font-size:19px;margin:0 0 4px}h2{font-size:15px;margin:22px 0 6px}
table{border-collapse:collapse;background:#fff;border:1px solid #e5e7eb}
th,td{padding:4px 8px;border-bottom:1px solid #f0f1f3;text-align:left;white-space:nowrap}
th{font-weight:600;background:#f3f4f6;font-size:12px}td.num{text-align:right;
font-variant-numeric:tabular-nums}.muted{color:#6b7280}.bad{color:#b91c1c}.ok{color:#15803d}
#problems li{color:#b91c1c}.banner{padding:6px 10px;border-radius:4px;display:inline-block}
.banner.bad{background:#fee2e2}.banner.ok{background:#dcfce7}
.bar{position:relative;width:220px;height:14px;background:#f3f4f6;border:1px solid #d1d5db}
.bar span{position:absolute;top:0;bottom:0}.bar .trigger{background:#fecaca}
.bar .target{background:#fde68a}.bar .sweep{background:#bfdbfe}
.bar .at{width:3px;background:#111;top:-3px;bottom:-3px}
tr[data-zone=trigger] td{background:#fef2f2}tr.refused td{color:#9a3412}
.charts figure{margin:0 0 14px}.charts figcaption{font-weight:600;margin:4px 0}
svg{background:#fff;border:1px solid #e5e7eb;max-width:100%;height:auto}
a{color:#1d4ed8}
"""

SCRIPT = r"""
"use strict";
const $ = (sel) => document.querySelector(sel);
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const kid of kids) node.append(kid === null || kid === undefined ? "" : kid);
  return node;
}
const time = (ms) => new Date(ms).toISOString().slice(11, 19);
const pct = (d) => d === null ? "n/a" : (parseFloat(d) * 100).toFixed(2) + " %";
const age = (s) => s === null ? "n/a" : s.toFixed(1) + " s";
const money = (v) => v === null ? "n/a" : v;
function table(head, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
            el("tbody", {}, ...rows));
}
function bar(p) {
  const b = p.bands, marks = [b.trigger, b.add_target, b.reduce_floor, p.distance]
    .filter((v) => v !== null).map(parseFloat);
  const full = Math.max(0.25, 1.25 * Math.max(...marks, 0));
  const x = (v) => Math.max(0, Math.min(100, parseFloat(v) / full * 100)) + "%";
  const node = el("div", {class: "bar", "data-zone": p.zone,
    title: `distance ${pct(p.distance)}; trigger ${pct(b.trigger)}, add target ` +
           `${pct(b.add_target)}, reduce floor ${pct(b.reduce_floor)}`});
  if (b.trigger !== null) node.append(el("span", {class: "trigger",
    style: `left:0;width:${x(b.trigger)}`}));
  if (b.trigger !== null && b.add_target !== null) node.append(el("span", {class: "target",
    style: `left:${x(b.trigger)};width:calc(${x(b.add_target)} - ${x(b.trigger)})`}));
  if (b.reduce_floor !== null) node.append(el("span", {class: "sweep",
    style: `left:${x(b.reduce_floor)};right:0`}));
  if (p.distance !== null) node.append(el("span", {class: "at", style: `left:${x(p.distance)}`}));
  return node;
}
const charts = new Map();
async function chart(p) {
  let fig = document.getElementById("chart-" + p.id);
  if (!fig) {
    fig = el("figure", {id: "chart-" + p.id}, el("figcaption", {},
      `${p.account} ${p.symbol} ${p.side}`), el("div", {class: "svg"}, "loading..."));
    $("#charts").append(fig);
  }
  if (charts.get(p.id) === p.chart_rev) return;
  charts.set(p.id, p.chart_rev);
  const parts = p.id.split("/").map(encodeURIComponent);
  const r = await fetch(`/view/charts/${parts[0]}/${parts[1]}.svg`, {credentials: "same-origin"});
  if (r.ok) fig.querySelector(".svg").innerHTML = await r.text();  // our own SVG
}
function render(s) {
  const i = s.instance;
  $("#instance").textContent = `instance ${i.id} (guardbot ${i.version}), ` +
    `${i.dry_run ? "DRY-RUN" : "LIVE"}, guarding ${i.guarded_here} of ${i.accounts} accounts` +
    (i.live_instances === null ? "" : `, ${i.live_instances} live instance(s)`) +
    (i.kill_switch ? ", KILL SWITCH ENGAGED" : "") + `; updated ${time(s.now_ms)} UTC`;
  const status = $("#status");
  status.className = "banner " + (s.ready ? "ok" : "bad");
  status.textContent = s.ready ? "ready" : `not ready: ${s.problems.length} problem(s)`;
  $("#problems").replaceChildren(...s.problems.map((p) => el("li", {}, p)));
  $("#accounts").replaceChildren(table(
    ["account", "guarded", "data age", "WebSocket", "free balance", "budget left today",
     "added today", "positions"],
    s.accounts.map((a) => el("tr", {},
      el("td", {}, a.name), el("td", {}, a.guarded_here ? "here" : "by another instance"),
      el("td", {class: "num"}, age(a.data_age_s)), el("td", {}, a.ws_connected ? "up" : "down"),
      el("td", {class: "num"}, money(a.free_balance)),
      el("td", {class: "num"}, `${money(a.budget.left)} / ${a.budget.per_day}`),
      el("td", {class: "num"}, money(a.budget.added)), el("td", {class: "num"}, a.positions)))));
  $("#positions").replaceChildren(table(
    ["account", "symbol", "side", "qty", "mark", "margin", "liquidation", "distance", "",
     "data age", "budget left today", "last decision"],
    s.positions.map((p) => {
      const note = p.notes.length ? p.notes[p.notes.length - 1] : null;
      return el("tr", {id: "pos-" + p.id, "data-zone": p.zone},
        el("td", {}, p.account), el("td", {}, p.symbol), el("td", {}, p.side),
        el("td", {class: "num"}, p.qty), el("td", {class: "num mark"}, p.mark),
        el("td", {class: "num"}, p.margin), el("td", {class: "num"}, money(p.liquidation_price)),
        el("td", {class: "num distance"}, pct(p.distance)), el("td", {}, bar(p)),
        el("td", {class: "num" + (p.stale ? " bad" : "")}, age(p.data_age_s)),
        el("td", {class: "num"}, `${money(p.budget.left)} / ${p.budget.per_day}`),
        el("td", {class: "muted note", title: note ? note.what : ""},
           note ? `${time(+note.at_ms)} ${note.what.slice(0, 48)}` : ""));
    })));
  $("#actions").replaceChildren(s.actions.length ? table(
    ["time", "account", "symbol", "action", "policy", "status", "reason", "record"],
    s.actions.map((a) => el("tr", {class: a.refused ? "refused action" : "action",
                                   "data-id": a.id},
      el("td", {}, time(a.time_ms)), el("td", {}, a.account), el("td", {}, a.symbol),
      el("td", {class: "num"}, `${a.kind} ${a.amount}${a.dry_run ? " (dry run)" : ""}`),
      el("td", {}, a.policy), el("td", {}, a.refused ? "REFUSED" : a.status),
      el("td", {class: "reason"}, a.message && a.message !== a.reason
        ? `${a.reason} (${a.message})` : a.reason),
      el("td", {}, el("a", {href: a.url, target: "_blank"}, "audit record")))))
    : el("p", {class: "muted"}, "no action recorded in the last hours"));
  $("#observations").replaceChildren(...s.observations.map((o) => el("li", {},
    `${time(o.time_ms)} ${o.account} ${o.symbol || ""} ${o.kind} ` +
    Object.entries(o.detail).map(([k, v]) => `${k}=${v}`).join(" "))));
  for (const p of s.positions) chart(p);
  for (const fig of [...document.querySelectorAll("#charts figure")]) {
    if (!s.positions.some((p) => "chart-" + p.id === fig.id)) fig.remove();
  }
}
function connect() {
  const conn = $("#conn");
  const events = new EventSource("/view/events");
  events.addEventListener("state", (e) => {
    conn.textContent = "live"; conn.className = "ok"; render(JSON.parse(e.data));
  });
  events.onerror = () => {
    conn.textContent = "connection lost: retrying"; conn.className = "bad";
  };
}
connect();
"""

PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>guardbot: live</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>{STYLE}</style></head><body>
<h1>guardbot <span id="status" class="banner">connecting</span>
<small id="conn" class="muted">connecting</small></h1>
<div id="instance" class="muted"></div>
<ul id="problems"></ul>
<h2>Accounts</h2><div id="accounts"></div>
<h2>Positions</h2><div id="positions"></div>
<h2>Last actions and refusals</h2><div id="actions"></div>
<h2>Observations</h2><ul id="observations" class="muted"></ul>
<h2>Charts</h2><div id="charts" class="charts"></div>
<script>{SCRIPT}</script>
</body></html>
"""


def login(message: str = "") -> str:
    """The form that trades the token for the page's session cookie."""
    problem = f'<p class="bad">{html.escape(message)}</p>' if message else ""
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>guardbot: "
            f"token</title><style>{STYLE}</style></head><body><h1>guardbot</h1>{problem}"
            "<p>This page needs the token of the guard's [health] section.</p>"
            '<form method="post" action="/view/login"><input type="password" name="token" '
            'autocomplete="current-password" autofocus size="40"> <button>open</button>'
            "</form></body></html>")


def action_record(record: dict[str, Any], name_of: Callable[[str], str]) -> str:
    """One action's audit record: what it was decided on, then every event with the time
    since the decision."""
    action = record["action"]
    events = record["events"]

    def cell(value: object) -> str:
        return html.escape("" if value is None else str(value))

    start = epoch_ms(events[0].get("time_ms", events[0].get("time"))) if events else None
    rows = "".join(
        f"<tr><th>{cell(name)}</th><td>{cell(value)}</td></tr>"
        for name, value in action.items()
        if name not in ("details",))  # fmt: skip
    details = action.get("details") or {}
    rows += "".join(f"<tr><th>details.{cell(k)}</th><td>{cell(v)}</td></tr>"
                    for k, v in details.items())
    timeline = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in (
            e.get("kind"), e.get("time") or e.get("time_ms"),
            "" if start is None else f"+{epoch_ms(e.get('time_ms', e.get('time'))) - start} ms",
            e.get("latency_ms"), e.get("code"), e.get("message"), e.get("detail"))) + "</tr>"
        for e in events)  # fmt: skip
    where = "" if record.get("recorded", True) else (
        '<p class="bad">Not in the database yet (waiting in the spool): what the live view'
        " kept.</p>")
    title = f"{name_of(str(action.get('account_id', '')))} {action.get('symbol', '')} " \
            f"{action.get('kind', '')} {action.get('amount', '')}"
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>guardbot: "
            f"action {cell(action.get('id'))}</title><style>{STYLE}</style></head><body>"
            f"<h1>Action {cell(title)}</h1>{where}<h2>Snapshot and decision</h2>"
            f"<table>{rows}</table><h2>Events</h2><table><thead><tr><th>event</th><th>at</th>"
            "<th>since decided</th><th>latency</th><th>code</th><th>message</th><th>detail"
            f"</th></tr></thead><tbody>{timeline}</tbody></table>"
            '<p><a href="/view">back to the live page</a></p></body></html>')

