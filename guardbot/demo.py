"""``guardbot demo``: the whole system on one machine, no keys, no network.

Starts the simulated exchange in-process on a free loopback port, opens two accounts with
identical positions (isolated longs and a short, plus a cross long on ETH that the guard must
never touch), guards one of them with ``topup`` and ``sweep`` while the other stays
unguarded, drives a volatile scenario at accelerated speed, and compares the two: how many
isolated positions were liquidated, how much margin the guard added and swept back. The audit
log is an SQLite file in the output folder, migrated automatically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TextIO

from guardbot.audit import schema
from guardbot.audit.database import create_audit_engine
from guardbot.audit.queries import summarize
from guardbot.config import Settings, parse_config
from guardbot.daemon import run_daemon
from guardbot.sim.admin import SimAccount, open_account
from guardbot.sim.reports import PositionRow
from guardbot.sim.server import SimServer

# (symbol, margin mode, signed quantity, leverage): the same book on both accounts.
DEMO_POSITIONS: tuple[tuple[str, str, str, int], ...] = (
    ("PERP_ETH_USDC", "ISOLATED", "2", 10),
    ("PERP_BTC_USDC", "ISOLATED", "0.1", 20),
    ("PERP_SOL_USDC", "ISOLATED", "-40", 5),
    ("PERP_ETH_USDC", "CROSS", "1", 5),
)
DEMO_USDC = "20000"
ANSI_HOME_CLEAR = "\x1b[H\x1b[2J"


# Wall-clock seconds without a guard action, once the scenario's scripted part is over,
# after which the guard has settled and the demo ends: twice the demo's poll interval.
SETTLE_S = 2.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    duration_s: float = 20.0
    speed: float = 30.0
    scenario: str = "fastcrash"
    seed: int = 7
    output: Path = Path("demo-output")
    # "screen": redraw a table (a terminal); "lines": one line per event (a pipe or a file);
    # "none": nothing until the summary (--json).
    display: Literal["screen", "lines", "none"] = "screen"
    stream: TextIO | None = None


def demo_settings(sim: SimServer, account: SimAccount, audit_url: str, spool: Path) -> Settings:
    """Guard settings for the demo: fast polling and a short cooldown, because simulated
    time runs ``speed`` times faster than the wall clock the guard measures."""
    return parse_config({
        "exchange": {"preset": "sim", "rest_url": sim.rest_url,
                     "public_ws_url": sim.public_ws_url, "private_ws_url": sim.private_ws_url},
        "audit": {"url": audit_url, "spool_dir": str(spool)},
        "poll": {"interval_s": 1.0, "fast_interval_s": 0.5, "max_data_age_s": 5.0},
        "budgets": {"cooldown_s": 0.5, "per_action": "2000", "min_amount": "1"},
        "health": {"enabled": False},
        "accounts": [{"name": "guarded", "account_id": account.account_id,
                      "orderly_key": account.orderly_key,
                      "orderly_secret": account.orderly_secret}],
        "policies": [
            # No look-ahead: the demo runs 30x faster than real time while the marks carry
            # real timestamps, so the fall would look 30x faster than it is.
            {"use": "topup", "params": {"trigger": "0.05", "target": "0.09", "reach_s": "0"}},
            {"use": "sweep", "params": {"safe": "0.25", "min_amount": "10"}},
        ],
    })  # fmt: skip


class _Tail(logging.Handler):
    """Keeps the guard's last decision and call lines for the live table, and the ones not
    yet printed for the event lines."""

    def __init__(self, size: int = 8) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=size)
        self.fresh: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.strftime('%H:%M:%S')} {record.getMessage()}")
        if record.name == "guardbot.executor":
            self.fresh.append(record.getMessage())

    def take(self) -> list[str]:
        fresh, self.fresh = self.fresh, []
        return fresh


@contextlib.contextmanager
def _tail_guard_logs() -> Iterator[_Tail]:
    tail = _Tail()
    loggers = [logging.getLogger(name) for name in ("guardbot.executor", "guardbot.daemon")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(tail)
        logger.setLevel(logging.INFO)
    try:
        yield tail
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(tail)
            logger.setLevel(level)


def position_rows(sim: SimServer, accounts: dict[str, str]) -> list[dict[str, Any]]:
    """One row per demo position per account, straight from the exchange's state."""
    engine = sim.engine
    liquidated = {(liq.account_id, liq.symbol, liq.margin_mode) for liq in engine.liquidations}
    rows = []
    for label, account_id in accounts.items():
        account = engine.account(account_id)
        held = {(p.symbol, p.margin_mode): p for p in engine.positions(account)}
        for symbol, mode, _, _ in DEMO_POSITIONS:
            view = held.get((symbol, mode))
            row: dict[str, Any] = {"account": label, "symbol": symbol, "mode": mode,
                                   "mark": engine.marks[symbol]}
            if view is None or view.qty == 0:
                gone = (account_id, symbol, mode) in liquidated
                row["status"] = "LIQUIDATED" if gone else "closed"
            else:
                liq = view.est_liq_price
                distance = None if not liq else abs(view.mark_price - liq) / view.mark_price
                row.update(qty=view.qty, margin=view.margin, liq=liq, status="open",
                           distance=distance)
            rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]], log_lines: list[str], elapsed_s: float,
                 options: DemoOptions, legend: Sequence[str] = ()) -> str:
    """The live screen: the legend, positions of both accounts and the guard's latest
    actions."""
    head = (f"guardbot demo  scenario={options.scenario} speed={options.speed:g}x  "
            f"{elapsed_s:5.1f}/{options.duration_s:g} s")
    lines = [head, *legend, "",
             f"{'account':<10}{'symbol':<15}{'mode':<10}{'qty':>8}{'mark':>12}{'margin':>11}"
             f"{'liq price':>12}{'distance':>10}  status"]
    for row in rows:
        if row["status"] != "open":
            lines.append(f"{row['account']:<10}{row['symbol']:<15}{row['mode']:<10}"
                         f"{'':>8}{row['mark']:>12.2f}{'':>11}{'':>12}{'':>10}  {row['status']}")
            continue
        distance = "-" if row["distance"] is None else f"{row['distance'] * 100:.1f} %"
        liq = "-" if row["liq"] is None else f"{row['liq']:.2f}"
        margin = "cross" if row["mode"] == "CROSS" else f"{row['margin']:.2f}"
        lines.append(f"{row['account']:<10}{row['symbol']:<15}{row['mode']:<10}"
                     f"{row['qty']:>8}{row['mark']:>12.2f}{margin:>11}{liq:>12}{distance:>10}"
                     f"  {row['status']}")
    lines += ["", "guard:"] + [f"  {line}" for line in log_lines]
    return "\n".join(lines)


def _percent(fraction: Any) -> str:
    return f"{Decimal(str(fraction)) * 100:.0f} %"


def demo_legend(settings: Settings, options: DemoOptions,
                phases: list[tuple[int, str]]) -> list[str]:
    """What the screen and the event lines mean: the two accounts, the policies' thresholds
    (from ``settings``) and the scenario's phases."""
    policies = []
    for policy in settings.policies:
        params = policy.params
        if policy.use == "topup":
            policies.append(f"topup adds margin when liquidation is less than "
                            f"{_percent(params['trigger'])} of the mark away, back to "
                            f"{_percent(params['target'])}")
        elif policy.use == "sweep":
            policies.append(f"sweep takes margin back to the free balance beyond "
                            f"{_percent(params['safe'])}")
        else:
            policies.append(policy.label)
    path = "; ".join(f"from {second} s {what}" if second else what
                     for second, what in phases) or "a random walk with no scripted end"
    indent = " " * 13
    return [
        "two accounts with the same positions and balance on the simulated exchange:",
        "  guarded    guardbot watches it:", *(indent + text for text in policies),
        "  unguarded  its twin, left alone",
        "  distance   how far the liquidation price is from the mark, as a share of the mark",
        f"  scenario   {options.scenario}: {path}",
        f"{indent}(simulated seconds, {options.speed:g} to the second here)",
    ]


class _Events:
    """What happened since the last look: the path's phase, liquidations, the guard's calls,
    as one line each."""

    def __init__(self, sim: SimServer, accounts: dict[str, str], tail: _Tail) -> None:
        self._sim, self._tail = sim, tail
        self._labels = {account_id: label for label, account_id in accounts.items()}
        self._phases = sim.prices.phases()
        self._phase = 0  # phases announced so far
        self._liquidations = 0

    def poll(self) -> list[str]:
        lines = []
        second = self._sim.prices.second
        while self._phase < len(self._phases) and self._phases[self._phase][0] <= second:
            lines.append(f"phase: {self._phases[self._phase][1]}")
            self._phase += 1
        liquidations = self._sim.engine.liquidations
        for liq in liquidations[self._liquidations:]:
            lines.append(f"LIQUIDATED: {self._labels.get(liq.account_id, liq.account_id)} "
                         f"{liq.symbol} {liq.margin_mode} at {liq.price}, "
                         f"{_usdc(liq.margin_lost)} USDC of margin lost")
        self._liquidations = len(liquidations)
        return lines + [f"guard: {line}" for line in self._tail.take()]

    def scripted_over(self) -> bool:
        """The path's scripted part is over (never, for an endless walk)."""
        return bool(self._phases) and self._sim.prices.second >= self._phases[-1][0]


def _show(options: DemoOptions, stream: TextIO, happened: list[str], elapsed: float,
          screen: Callable[[], str]) -> None:
    if options.display == "lines":
        stream.writelines(f"{elapsed:5.1f} s  {line}\n" for line in happened)
    elif options.display == "screen":
        stream.write(ANSI_HOME_CLEAR + screen() + "\n")
    stream.flush()


def _liquidations(sim: SimServer, account_id: str) -> int:
    return sum(1 for liq in sim.engine.liquidations
               if liq.account_id == account_id and liq.margin_mode == "ISOLATED")


def render_summary(summary: dict[str, Any]) -> str:
    """The closing comparison, for humans."""
    guarded, unguarded = summary["guarded"], summary["unguarded"]
    efficacy = summary["efficacy"]
    return "\n".join([
        f"scenario {summary['scenario']} at {summary['speed']}x for {summary['duration_s']} s "
        f"({summary['isolated_positions']} isolated positions per account)",
        f"{'':<24}{'guarded':>12}{'unguarded':>12}",
        f"{'isolated liquidations':<24}{guarded['liquidations']:>12}"
        f"{unguarded['liquidations']:>12}",
        f"{'margin added (USDC)':<24}{guarded['margin_added']:>12}"
        f"{unguarded['margin_added']:>12}",
        f"{'margin swept (USDC)':<24}{guarded['margin_swept']:>12}"
        f"{unguarded['margin_swept']:>12}",
        f"{'actions':<24}{guarded['actions']:>12}{unguarded['actions']:>12}",
        f"cross position touched: {'yes' if summary['cross_touched'] else 'no'}",
        f"efficacy: {efficacy['saved']} of {efficacy['savable']} savable positions saved; "
        f"{efficacy['margin_added']} USDC added against the oracle's "
        f"{efficacy['oracle_margin']} (one top-up at the start, knowing the path)",
        f"audit log: {summary['audit_db']}",
        *([f"summary: {summary['summary_file']}"] if "summary_file" in summary else []),
    ])  # fmt: skip


async def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo and return its summary (see ``render_summary``)."""
    # Built first: a bad scenario is refused before any file is touched.
    server = SimServer(seed=options.seed, scenario=options.scenario, speed=options.speed,
                       host="127.0.0.1", port=0)
    output = options.output
    output.mkdir(parents=True, exist_ok=True)
    db_path = output / "audit.db"
    spool = output / "spool"
    summary_file = output / "summary.json"
    for stale in (db_path, spool, summary_file):  # every run starts from a clean audit log
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    audit_url = f"sqlite:///{db_path}"
    await asyncio.to_thread(schema.upgrade, audit_url)
    stream = options.stream or sys.stdout
    async with server as sim:
        guarded = await open_account(sim.rest_url, DEMO_USDC, DEMO_POSITIONS)
        unguarded = await open_account(sim.rest_url, DEMO_USDC, DEMO_POSITIONS)
        accounts = {"guarded": guarded.account_id, "unguarded": unguarded.account_id}
        cross_margin_before = _cross_qty(sim, guarded.account_id)
        settings = demo_settings(sim, guarded, audit_url, spool)
        opened = _isolated_rows(sim, guarded.account_id)
        free_at_start = sim.engine.account_view(
            sim.engine.account(guarded.account_id)).free_collateral
        stop = asyncio.Event()
        legend = demo_legend(settings, options, sim.prices.phases())
        with _tail_guard_logs() as tail:
            events = _Events(sim, accounts, tail)
            if options.display == "lines":
                stream.write("\n".join(legend) + "\n\n")
            guard = asyncio.create_task(run_daemon(settings, stop=stop))
            started = time.monotonic()
            last_event = started
            scripted_over_at: float | None = None

            def screen() -> str:
                return render_table(position_rows(sim, accounts), list(tail.lines), elapsed,
                                    options, legend)

            while (elapsed := (now := time.monotonic()) - started) < options.duration_s:
                if guard.done():
                    break
                happened = events.poll()
                if any(line.startswith("guard:") for line in happened):
                    last_event = now
                _show(options, stream, happened, elapsed, screen)
                if scripted_over_at is None and events.scripted_over():
                    scripted_over_at = now
                if scripted_over_at is not None and (
                        now - max(scripted_over_at, last_event) >= SETTLE_S):
                    break  # the path is done and the guard has settled
                await asyncio.sleep(0.25)
            stop.set()
            await guard
            _show(options, stream, events.poll(), elapsed, screen)
        if options.display == "screen":
            stream.write("\n")
        elif options.display == "lines":
            stream.write(f"{elapsed:5.1f} s  done\n\n")
        figures = _audit_figures(audit_url)
        none = {"liquidations": 0, "margin_added": "0", "margin_swept": "0", "actions": 0}
        efficacy = _efficacy(sim, guarded.account_id, opened, settings, free_at_start,
                             Decimal(figures.get(guarded.account_id, none)["margin_added"]))
        summary = {
            "guarded": {**none, **figures.get(guarded.account_id, {}),
                        "liquidations": _liquidations(sim, guarded.account_id)},
            "unguarded": {**none, **figures.get(unguarded.account_id, {}),
                          "liquidations": _liquidations(sim, unguarded.account_id)},
            "scenario": options.scenario,
            "speed": options.speed,
            "duration_s": round(elapsed, 1),
            "isolated_positions": sum(1 for p in DEMO_POSITIONS if p[1] == "ISOLATED"),
            "cross_touched": _cross_qty(sim, guarded.account_id) != cross_margin_before,
            "efficacy": efficacy,
            "audit_db": str(db_path),
            "summary_file": str(summary_file),
        }
        summary_file.write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def _isolated_rows(sim: SimServer, account_id: str) -> list[PositionRow]:
    account = sim.engine.account(account_id)
    return [row for row in sim.engine.positions(account)
            if row.margin_mode == "ISOLATED" and row.qty != 0]


def _efficacy(sim: SimServer, account_id: str, opened: list[PositionRow], settings: Settings,
              free_at_start: Decimal, added: Decimal) -> dict[str, Any]:
    """Savable positions saved, and the margin the guard added against the oracle's: the
    least one top-up at the start, knowing the whole path (``guardbot.backtest.oracle``),
    that would have kept each savable position alive within the budgets."""
    from guardbot.backtest.oracle import verdict

    liquidated = {liq.symbol for liq in sim.engine.liquidations
                  if liq.account_id == account_id and liq.margin_mode == "ISOLATED"}
    savable, saved, oracle = 0, 0, Decimal(0)
    for row in opened:
        low, high = sim.prices.extremes[row.symbol]
        found = verdict(sim.prices.markets[row.symbol], row.margin, row.qty, row.cost_position,
                        [low, high], settings.budgets, free_at_start)
        if found.savable:
            savable += 1
            saved += row.symbol not in liquidated
            oracle += found.extra
    return {"savable": savable, "saved": saved, "margin_added": _usdc(added),
            "oracle_margin": _usdc(oracle)}


def _cross_qty(sim: SimServer, account_id: str) -> tuple[Decimal, Decimal] | None:
    """The cross ETH position's quantity and cost: the guard must leave them alone."""
    account = sim.engine.account(account_id)
    for view in sim.engine.positions(account):
        if view.margin_mode == "CROSS" and view.symbol == "PERP_ETH_USDC":
            return (view.qty, view.cost_position)
    return None


def _audit_figures(audit_url: str) -> dict[str, dict[str, Any]]:
    engine = create_audit_engine(audit_url)
    try:
        return {
            row.key: {"margin_added": _usdc(row.added),
                      "margin_swept": _usdc(row.reduced), "actions": row.actions}
            for row in summarize(engine, by="account")
        }
    finally:
        engine.dispose()


def _usdc(amount: Decimal) -> str:
    return format(amount.quantize(Decimal("0.01")), "f")
