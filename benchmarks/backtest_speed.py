"""How fast ``guardbot backtest`` runs. Prints its figures; asserts nothing.

Set-up: ``--positions`` accounts with one isolated position each (ETH longs at 3x, 5x, 10x
and 20x in turn, 1 ETH), each with its unguarded twin on the same engine; the config
``guardbot sim --write-config`` writes (topup and sweep, default budgets and polling); the
``random`` path (GARCH volatility with jumps) at one mark per second for ``--hours``. It
prints the wall time, virtual seconds per wall second, the calls the venue answered, and
(``--profile``) where the time went, by module.

    .venv/bin/python benchmarks/backtest_speed.py                 # 100 positions, 24 h
    .venv/bin/python benchmarks/backtest_speed.py --hours 1 --profile
    .venv/bin/python benchmarks/backtest_speed.py --poll-s 10     # the config's polling
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import pstats
import time
from collections import defaultdict
from decimal import Decimal

from guardbot.backtest.paths import random_path
from guardbot.backtest.portfolio import Book, BookAccount, BookPosition
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--poll-s", type=float, default=None,
                        help="[poll] interval_s and fast_interval_s (default: the config's, "
                             "5 s and 1 s near the trigger)")
    args = parser.parse_args()
    logging.getLogger("guardbot").setLevel(logging.ERROR)
    poll = {} if args.poll_s is None else {"interval_s": args.poll_s,
                                           "fast_interval_s": args.poll_s}
    settings = parse_config({"policies": [{"use": "topup"}, {"use": "sweep"}], "poll": poll})
    path = random_path(round(args.hours * 3600), seed=args.seed)
    scenario = Scenario(book(args.positions), path, settings, load_policies(settings))
    with scratch_folder() as folder:
        template = AuditTemplate(folder)
        profile = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        result = scenario.run(template)
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - started
    virtual = path.duration_ms / 1000
    moved = sum(n for n, _ in result.ledger.exchange.values())
    print(f"{args.positions} positions (+{args.positions} unguarded twins), {path.name} "
          f"path, {len(path.factors)} marks, {virtual / 3600:g} h of virtual time")
    print(f"polling: every {settings.poll.interval_s:g} s, {settings.poll.fast_interval_s:g} s "
          "near the trigger")
    print(f"wall {wall:.1f} s: {virtual / wall:,.0f} virtual s per s, "
          f"{wall / virtual * 1e6:.0f} us per virtual second")
    print(f"engine.advance (marks, liquidation): {result.phases['engine']:.1f} s")
    print(f"venue calls: {dict(sorted(result.venue.items()))}")
    print(f"margin changes applied: {moved}; ledger equal to the audit log: "
          f"{result.ledger.equal}; guarded liquidations "
          f"{sum(p.guarded_liquidated_ms is not None for p in result.positions)}, unguarded "
          f"{sum(p.unguarded_liquidated_ms is not None for p in result.positions)}")
    if profile is not None:
        stats = pstats.Stats(profile)
        by_area: dict[str, float] = defaultdict(float)
        for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            by_area[area(filename)] += tottime
        total = sum(by_area.values())
        print("time by area (own time, under the profiler):")
        for name, seconds in sorted(by_area.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<32} {seconds:7.1f} s  {seconds / total:5.1%}")


if __name__ == "__main__":
    main()
