"""Failover time of account ownership (guardbot/ownership.py) on a real PostgreSQL server.

Starts three ``python -m guardbot.ownership`` processes sharing the accounts, waits until
they have divided them, SIGKILLs one at a random moment and measures the time until the two
survivors guard every account again. Repeats, then prints the figures.

    .venv/bin/python benchmarks/failover.py [--rounds 5] [--interval 2.0] [--accounts 30]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

# The same subprocess wrapper the ownership tests kill (tests/test_ownership.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_ownership import Child


def wait_covered(group: list[Child], accounts: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for instance in group:
            instance.poll()
        sets = [i.owned for i in group]
        if set().union(*sets) == set(accounts) and sum(map(len, sets)) == len(accounts):
            return
        time.sleep(0.01)
    raise SystemExit(f"accounts not covered within {timeout_s} s")


def one_round(accounts: list[str], interval_s: float) -> float:
    ns = f"bench-{uuid.uuid4().hex}"
    group = [Child(ns, f"i{n}", interval_s, accounts) for n in range(3)]
    try:
        wait_covered(group, accounts, 10 * interval_s + 10)
        # Kill at a random phase of the survivors' tick cycle.
        time.sleep(interval_s * (1 + random.random()))
        victim, survivors = group[0], group[1:]
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.process.wait()
        wait_covered(survivors, accounts, 10 * interval_s + 10)
        return max(s.changed_at for s in survivors) - killed_at
    finally:
        for instance in group:
            instance.process.kill()
            instance.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="ownership interval_s")
    parser.add_argument("--accounts", type=int, default=30)
    args = parser.parse_args()
    accounts = [f"0x{i:064x}" for i in range(1, args.accounts + 1)]
    times = [one_round(accounts, args.interval) for _ in range(args.rounds)]
    print(
        f"failover after SIGKILL (3 instances, {args.accounts} accounts, "
        f"interval_s={args.interval}, {args.rounds} rounds): "
        f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
        f"max {max(times):.2f} s"
    )


if __name__ == "__main__":
    main()
