"""How fast ``guardbot backtest`` runs. Prints its figures; asserts nothing.

Set-up: ``--positions`` accounts with one isolated position each (ETH longs at 3x, 5x, 10x
and 20x in turn, 1 ETH), each with its unguarded twin on the same engine; the config
``guardbot sim --write-config`` writes (topup and sweep, default budgets and polling); the
``random`` path (GARCH volatility with jumps) at one mark per second for ``--hours``. It
prints the wall time, virtual seconds per wall second, the calls the venue answered, and
(``--profile``) where the time went, by module.

``--compare REV`` measures the same run on another revision too (``git archive`` into a
temporary folder, imported instead of this tree), alternating the two ``--repeat`` times in
one session so that both see the same load on the machine, and prints one line per run
and the medians: positions, simulated hours, polls, wall and CPU seconds, polls per second.
Both must decide the same: the script says whether the runs' actions and ledgers agree.

    .venv/bin/python benchmarks/backtest_speed.py                 # 100 positions, 24 h
    .venv/bin/python benchmarks/backtest_speed.py --hours 1 --profile
    .venv/bin/python benchmarks/backtest_speed.py --poll-s 10     # the config's polling
    .venv/bin/python benchmarks/backtest_speed.py --hours 1 --compare HEAD~3 --repeat 3
    .venv/bin/python benchmarks/backtest_speed.py --compare HEAD~3 --against HEAD --repeat 1
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import logging
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from revisions import REPO, agreement, alternate, checkout

from guardbot.backtest.paths import random_path
from guardbot.backtest.portfolio import Book, BookAccount, BookPosition
from guardbot.backtest.results import ScenarioResult
from guardbot.backtest.runner import AuditTemplate, Scenario, scratch_folder
from guardbot.config import parse_config
from guardbot.daemon import load_policies

LEVERAGES = (3, 5, 10, 20)
AREAS = {
    "guardbot/guard.py": "guard", "guardbot/book.py": "guard", "guardbot/policies": "guard",
    "guardbot/arbiter.py": "guard", "guardbot/risk.py": "guard", "guardbot/executor.py": "guard",
    "guardbot/settlement.py": "guard", "guardbot/audit": "audit log",
    "guardbot/sim": "simulator (engine, payloads)", "guardbot/exchange": "bot wire parsing",
    "guardbot/backtest": "backtest driver and venue", "guardbot/feeds": "poller and streams",
    "asyncio": "event loop", "json": "json", "decimal": "decimal", "sqlalchemy": "audit log",
}  # fmt: skip


def book(positions: int) -> Book:
    return Book("benchmark", tuple(
        BookAccount(f"a{i}", (BookPosition("PERP_ETH_USDC", Decimal(1),
                                           LEVERAGES[i % len(LEVERAGES)]),),
                    free_usdc=Decimal(20000))
        for i in range(positions)))  # fmt: skip


def area(filename: str) -> str:
    for key, name in AREAS.items():
        if key in filename:
            return name
    return "other"


def decisions_digest(result: ScenarioResult) -> str:
    """A digest of what the guard did: every audited action (time, position, kind, amount,
    outcome), the exchange's ledger, liquidations and refusals by reason."""
    lines = [f"{a.time_ms} {a.account_id} {a.symbol} {a.kind.value} {a.amount} "
             f"{a.status.value}"
             for p in result.positions for a in p.history]  # fmt: skip
    lines += [f"{p.account} {p.guarded_liquidated_ms} {p.unguarded_liquidated_ms} "
              f"{p.peak_extra} {p.final_extra} "
              f"{sorted((r.value, n) for r, n in p.refusals.items())}"
              for p in result.positions]  # fmt: skip
    lines += sorted(f"{k} {v}" for k, v in result.ledger.exchange.items())
    lines += sorted(f"{k} {v}" for k, v in result.venue.items())
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process: its figures (and the profile when asked)."""
    logging.getLogger("guardbot").setLevel(logging.ERROR)
    poll = {} if args.poll_s is None else {"interval_s": args.poll_s,
                                           "fast_interval_s": args.poll_s}
    settings = parse_config({"policies": [{"use": "topup"}, {"use": "sweep"}], "poll": poll})
    path = random_path(round(args.hours * 3600), seed=args.seed)
    scenario = Scenario(book(args.positions), path, settings, load_policies(settings))
    with scratch_folder() as folder:
        template = AuditTemplate(folder)
        profile = cProfile.Profile() if args.profile else None
        started, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        result = scenario.run(template)
        if profile is not None:
            profile.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    virtual = path.duration_ms / 1000
    figures = {
        "positions": args.positions, "hours": virtual / 3600, "marks": len(path.factors),
        "polls": result.venue.get("GET /v1/positions", 0), "wall_s": wall, "cpu_s": cpu,
        "engine_s": result.phases.get("engine", 0.0), "venue": dict(sorted(result.venue.items())),
        "moved": sum(n for n, _ in result.ledger.exchange.values()),
        "ledger_equal": result.ledger.equal,
        "guarded_liquidated": sum(p.guarded_liquidated_ms is not None for p in result.positions),
        "unguarded_liquidated": sum(p.unguarded_liquidated_ms is not None
                                    for p in result.positions),
        "digest": decisions_digest(result),
        "poll_s": (settings.poll.interval_s, settings.poll.fast_interval_s),
        "path": path.name,
    }  # fmt: skip
    if profile is not None:
        stats = pstats.Stats(profile)
        by_area: dict[str, float] = defaultdict(float)
        for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            by_area[area(filename)] += tottime
        figures["areas"] = dict(by_area)
    return figures


def report(figures: dict[str, Any]) -> None:
    wall, virtual = figures["wall_s"], figures["hours"] * 3600
    print(f"{figures['positions']} positions (+{figures['positions']} unguarded twins), "
          f"{figures['path']} path, {figures['marks']} marks, {figures['hours']:g} h of "
          "virtual time")
    print(f"polling: every {figures['poll_s'][0]:g} s, {figures['poll_s'][1]:g} s near the "
          "trigger")
    print(f"wall {wall:.1f} s (CPU {figures['cpu_s']:.1f} s): {virtual / wall:,.0f} virtual s "
          f"per s, {wall / virtual * 1e6:.0f} us per virtual second, "
          f"{figures['polls'] / wall:,.0f} polls per s")
    print(f"engine.advance (marks, liquidation): {figures['engine_s']:.1f} s")
    print(f"venue calls: {figures['venue']}")
    print(f"margin changes applied: {figures['moved']}; ledger equal to the audit log: "
          f"{figures['ledger_equal']}; guarded liquidations {figures['guarded_liquidated']}, "
          f"unguarded {figures['unguarded_liquidated']}; decisions digest {figures['digest']}")
    if "areas" in figures:
        total = sum(figures["areas"].values())
        print("time by area (own time, under the profiler):")
        for name, seconds in sorted(figures["areas"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<32} {seconds:7.1f} s  {seconds / total:5.1%}")


def compare(args: argparse.Namespace, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as folder:
        trees = {args.compare: checkout(args.compare, Path(folder) / "old"),
                 args.against or "this tree": REPO if args.against is None
                 else checkout(args.against, Path(folder) / "new")}  # fmt: skip
        print(f"{'code':<12} {'positions':>9} {'hours':>6} {'polls':>10} {'wall s':>8} "
              f"{'CPU s':>8} {'polls/s':>9}  digest")

        def show(name: str, figures: dict[str, Any]) -> None:
            print(f"{name:<12} {figures['positions']:>9} {figures['hours']:>6g} "
                  f"{figures['polls']:>10,} {figures['wall_s']:>8.1f} "
                  f"{figures['cpu_s']:>8.1f} {figures['polls'] / figures['wall_s']:>9,.0f}"
                  f"  {figures['digest']}", flush=True)

        runs = alternate(__file__, trees, argv, args.repeat, show)
        print("medians:")
        for name, found in runs.items():
            wall = statistics.median(f["wall_s"] for f in found)
            cpu = statistics.median(f["cpu_s"] for f in found)
            print(f"  {name:<12} wall {wall:.1f} s, CPU {cpu:.1f} s, "
                  f"{found[0]['polls'] / wall:,.0f} polls/s")
        old, new = (statistics.median(f["wall_s"] for f in runs[n]) for n in trees)
        print(f"  speed-up {old / new:.2f}x")
        print(agreement(f["digest"] for found in runs.values() for f in found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--poll-s", type=float, default=None,
                        help="[poll] interval_s and fast_interval_s (default: the config's, "
                             "5 s and 1 s near the trigger)")
    parser.add_argument("--compare", metavar="REV",
                        help="also measure git revision REV, alternating with this tree")
    parser.add_argument("--against", metavar="REV",
                        help="with --compare: measure revision REV instead of this tree (a "
                             "shared working tree may hold others' unfinished edits)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each with --compare")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        argv = ["--positions", str(args.positions), "--hours", str(args.hours),
                "--seed", str(args.seed)]
        if args.poll_s is not None:
            argv += ["--poll-s", str(args.poll_s)]
        compare(args, argv)
        return
    figures = measure(args)
    if args.json:
        print(json.dumps(figures))
    else:
        report(figures)


if __name__ == "__main__":
    main()
