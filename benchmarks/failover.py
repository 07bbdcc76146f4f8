"""Failover time of account ownership (guardbot/ownership.py) on a real PostgreSQL server.

Starts ``--instances`` ``python -m guardbot.ownership`` processes sharing the accounts, waits
until they have divided them, then stops one at a random phase of the others' ticks and
measures the time until the survivors guard every account again:

- SIGKILL: the process dies, its socket closes and the server drops its session;
- SIGSTOP: the process hangs with its session open (its locks stay held), as a host lost
  behind a TCP session the server still thinks is open. A round in which the survivors
  have not taken over after ``--give-up`` seconds counts as no failover.

Each round starts fresh processes. Prints min, median and max per signal.

    .venv/bin/python benchmarks/failover.py [--rounds 5] [--interval S] [--accounts 30]
    .venv/bin/python benchmarks/failover.py --rounds 5 --compare main

Without ``--interval`` every guardbot runs on its own default tick. ``--compare REV`` measures
revision REV too (``git archive``, imported instead of this tree), one round of each in
turn, so that both see the same load on the machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from revisions import REPO, alternate, checkout

# The same subprocess wrapper the ownership tests stop and kill (tests/test_ownership.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_ownership import Child

from guardbot.ownership import AccountOwnership

SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGSTOP": signal.SIGSTOP}


def covered(group: list[Child], accounts: list[str]) -> bool:
    for instance in group:
        instance.poll()
    sets = [i.owned for i in group]
    return set().union(*sets) == set(accounts) and sum(map(len, sets)) == len(accounts)


def wait_covered(group: list[Child], accounts: list[str], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if covered(group, accounts):
            return True
        time.sleep(0.01)
    return False


def default_interval_s() -> float:
    """The tick of the guardbot this interpreter imports (this tree's, or REV's)."""
    default = inspect.signature(AccountOwnership).parameters["interval_s"].default
    return float(default)


def one_round(signame: str, accounts: list[str], instances: int, interval_s: float | None,
              give_up_s: float) -> float | None:
    """Seconds from the signal to the survivors covering every account (``None``: not
    within ``give_up_s``)."""
    tick_s = interval_s or default_interval_s()
    ns = f"bench-{uuid.uuid4().hex}"
    group = [Child(ns, f"i{n}", interval_s, accounts) for n in range(instances)]
    try:
        if not wait_covered(group, accounts, 20 * tick_s + 10):
            raise SystemExit("the instances never divided the accounts")
        # Stop at a random phase of the survivors' tick cycle.
        time.sleep(tick_s * (1 + random.random()))
        victim, survivors = group[0], group[1:]
        victim.process.send_signal(SIGNALS[signame])
        signalled_at = time.time()
        if not wait_covered(survivors, accounts, give_up_s):
            return None
        return max(s.changed_at for s in survivors) - signalled_at
    finally:
        for instance in group:
            instance.process.send_signal(signal.SIGCONT)
            instance.process.kill()
            instance.process.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    accounts = [f"0x{i:064x}" for i in range(1, args.accounts + 1)]
    figures: dict[str, Any] = {"interval_s": args.interval or default_interval_s()}
    for signame in args.signals:
        figures[signame] = [
            one_round(signame, accounts, args.instances, args.interval, args.give_up)
            for _ in range(args.rounds)
        ]
    return figures


def summary(times: list[float | None], give_up_s: float) -> str:
    done = [t for t in times if t is not None]
    missed = len(times) - len(done)
    text = (f"min {min(done):.2f} s, median {statistics.median(done):.2f} s, "
            f"max {max(done):.2f} s" if done else "no failover")  # fmt: skip
    if missed:
        text += f" ({missed} of {len(times)} rounds: none within {give_up_s:g} s)"
    return text


def report(figures: dict[str, Any], args: argparse.Namespace, code: str = "") -> None:
    for signame in args.signals:
        print(f"{code}failover after {signame} ({args.instances} instances, {args.accounts}"
              f" accounts, interval_s={figures['interval_s']:g}, {len(figures[signame])}"
              f" rounds): {summary(figures[signame], args.give_up)}")  # fmt: skip


def compare(args: argparse.Namespace) -> None:
    argv = ["--rounds", "1", "--accounts", str(args.accounts), "--instances",
            str(args.instances), "--give-up", str(args.give_up), "--signals", *args.signals]
    if args.interval:
        argv += ["--interval", str(args.interval)]
    with tempfile.TemporaryDirectory(prefix="guardbot-bench-") as folder:
        trees = {args.compare: checkout(args.compare, Path(folder) / "old"),
                 "this tree": REPO}  # fmt: skip

        def show(name: str, figures: dict[str, Any]) -> None:
            rounds = ", ".join(
                f"{s} {'-' if figures[s][0] is None else format(figures[s][0], '.2f')}"
                for s in args.signals)
            print(f"  {name:<10} {rounds}", flush=True)

        runs = alternate(__file__, trees, argv, args.rounds, show)
    for name, figures in runs.items():
        merged = {"interval_s": figures[0]["interval_s"]}
        for signame in args.signals:
            merged[signame] = [t for f in figures for t in f[signame]]
        report(merged, args, f"{name:<10} ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per signal")
    parser.add_argument("--interval", type=float, default=None,
                        help="ownership interval_s (default: each guardbot's own)")
    parser.add_argument("--accounts", type=int, default=30)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--signals", nargs="+", choices=sorted(SIGNALS),
                        default=["SIGKILL", "SIGSTOP"])
    parser.add_argument("--give-up", type=float, default=30.0,
                        help="seconds after which a round counts as no failover")
    parser.add_argument("--compare", metavar="REV",
                        help="also measure git revision REV, alternating with this tree")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return
    figures = measure(args)
    if args.json:
        print(json.dumps(figures))
    else:
        report(figures, args)


if __name__ == "__main__":
    main()
