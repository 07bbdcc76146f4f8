"""AccountOwnership against SQLite and the real PostgreSQL server (tests/conftest.py PG_URL).

Every PostgreSQL test uses its own lock namespace, so runs in parallel never meet.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PG_URL
from faults.pgcluster import PgCluster

from guardbot import ownership
from guardbot.ownership import AccountOwnership, OwnershipError

ACCOUNTS = [f"0x{i:064x}" for i in range(1, 11)]
FAST = 0.1  # interval_s for in-process instances: real PostgreSQL, accelerated ticks


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Poll ``condition`` until it holds; return how long it took (fails on timeout)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


def balanced(instances: list[AccountOwnership]) -> bool:
    sets = [i.owned() for i in instances]
    quota = math.ceil(len(ACCOUNTS) / len(instances))
    return (
        set().union(*sets) == set(ACCOUNTS)
        and sum(len(s) for s in sets) == len(ACCOUNTS)
        and all(len(s) <= quota for s in sets)
    )


# -- SQLite: one instance owns everything -------------------------------------------------


async def test_sqlite_instance_owns_every_account(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with AccountOwnership(url, "only", ACCOUNTS) as own:
        assert own.owned() == frozenset(ACCOUNTS)
        assert own.live_instances == 1
    assert own.owned() == frozenset()


async def test_second_instance_on_the_same_sqlite_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    async with AccountOwnership(url, "first", ACCOUNTS):
        with pytest.raises(OwnershipError, match="only one instance"):
            async with AccountOwnership(url, "second", ACCOUNTS):
                pass
    # Released on exit: a new instance may start.
    async with AccountOwnership(url, "third", ACCOUNTS) as own:
        assert own.owned() == frozenset(ACCOUNTS)


@pytest.mark.parametrize(
    ("url", "reason"),
    [("mysql://u@h/db", "needs PostgreSQL or SQLite"), ("not a url", "not a valid")],
)
def test_unsupported_database_is_a_clear_error(url: str, reason: str) -> None:
    with pytest.raises(OwnershipError, match=reason):
        AccountOwnership(url, "x", ACCOUNTS)


# -- PostgreSQL, in process ---------------------------------------------------------------


def pg_instance(ns: str, name: str, **kwargs: Any) -> AccountOwnership:
    return AccountOwnership(PG_URL, name, ACCOUNTS, interval_s=FAST, namespace=ns, **kwargs)


@pytest.mark.postgres
async def test_three_instances_divide_the_accounts_and_take_over_from_a_leaver() -> None:
    ns = namespace()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(pg_instance(ns, "a"))
        assert a.owned() == frozenset()  # nothing until the accounts have been free a while
        await until(lambda: a.owned() == frozenset(ACCOUNTS))  # alone: everything
        async with (
            pg_instance(ns, "b") as b,
            pg_instance(ns, "c") as c,
        ):
            await until(lambda: balanced([a, b, c]))
            assert a.live_instances == b.live_instances == c.live_instances == 3


@pytest.mark.postgres
async def test_leaver_accounts_are_taken_over_and_waiters_are_woken() -> None:
    ns = namespace()
    async with pg_instance(ns, "a") as a, pg_instance(ns, "b") as b:
        leaver = pg_instance(ns, "c")
        async with leaver:
            await until(lambda: balanced([a, b, leaver]))
            orphaned = leaver.owned()
            assert orphaned
            woken = asyncio.gather(a.wait_changed(), b.wait_changed())
        took = await until(lambda: balanced([a, b]))
        assert took < 2.0
        await asyncio.wait_for(woken, 1.0)
        assert orphaned <= a.owned() | b.owned()


@pytest.mark.postgres
async def test_duplicate_instance_id_is_refused_with_a_clear_error() -> None:
    ns = namespace()
    async with pg_instance(ns, "same"):
        with pytest.raises(OwnershipError, match="own instance id"):
            async with pg_instance(ns, "same"):
                pass


async def test_unreachable_database_is_a_clear_error_at_start() -> None:
    url = "postgresql+psycopg://postgres:hunter2-secret@127.0.0.1:1/test"
    with pytest.raises(OwnershipError, match="cannot reach") as raised:
        async with AccountOwnership(url, "x", ACCOUNTS):
            pass
    assert "hunter2" not in str(raised.value)


@pytest.mark.postgres
async def test_no_account_is_ever_owned_twice_under_churn() -> None:
    """Instances join and leave repeatedly; at every change no account has two owners."""
    ns = namespace()
    live: list[AccountOwnership] = []
    overlaps: list[set[str]] = []

    def check(_: frozenset[str]) -> None:
        seen: set[str] = set()
        for instance in live:
            overlaps.append(seen & instance.owned())
            seen |= instance.owned()

    def make(name: str) -> AccountOwnership:
        own = pg_instance(ns, name, on_change=check)
        live.append(own)
        return own

    async with make("anchor") as anchor:
        for round_ in range(4):
            async with make(f"x{round_}") as x, make(f"y{round_}") as y:
                group = [anchor, x, y]
                await until(lambda: balanced(group))  # noqa: B023 - awaited in this iteration
            live[:] = [anchor]
            await until(lambda: anchor.owned() == frozenset(ACCOUNTS))
    assert overlaps and not any(overlaps)


def held_by(application_name: str, ns_accounts: int | None = None) -> int:
    """How many advisory locks the sessions named ``application_name`` hold right now."""
    with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND a.application_name = %s",
            (application_name,),
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.postgres
async def test_lost_lock_connection_keeps_the_accounts_and_relocks_them() -> None:
    """The server ends our session (restart, admin kill): the locks are gone, but nobody can
    take the accounts before we re-lock them on the next tick, so we never stop guarding."""
    ns = namespace()
    changes: list[frozenset[str]] = []
    async with pg_instance(ns, "victim", on_change=changes.append) as own:
        await until(lambda: own.owned() == frozenset(ACCOUNTS))
        async with pg_instance(ns, "peer") as peer:
            with psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'guardbot:victim'"
                )
            # Membership plus every account, on a new session.
            await until(lambda: held_by("guardbot:victim") == 1 + len(ACCOUNTS))
            # The peer gets its share by rebalancing, never by taking a lost lock.
            await until(lambda: balanced([own, peer]))
    assert changes[0] == frozenset(ACCOUNTS) and frozenset() not in changes[:-1]  # -1: exit


@pytest.mark.postgres
async def test_database_down_longer_than_hold_drops_then_relocks_at_once() -> None:
    with PgCluster() as pg:
        changes: list[frozenset[str]] = []
        async with AccountOwnership(
            pg.url, "solo", ACCOUNTS, interval_s=FAST, hold_s=0.5, on_change=changes.append
        ) as own:
            await until(lambda: own.owned() == frozenset(ACCOUNTS))
            pg.stop()
            await until(lambda: own.owned() == frozenset(), timeout_s=8)
            pg.start()
            # Back without waiting to see whether a previous owner returns: it was us.
            took = await until(lambda: own.owned() == frozenset(ACCOUNTS))
    assert took < 1.0
    assert changes == [frozenset(ACCOUNTS), frozenset(), frozenset(ACCOUNTS), frozenset()]


@pytest.mark.postgres
async def test_database_down_shorter_than_hold_keeps_guarding() -> None:
    with PgCluster() as pg:
        changes: list[frozenset[str]] = []
        async with AccountOwnership(
            pg.url, "solo", ACCOUNTS, interval_s=FAST, hold_s=5.0, on_change=changes.append
        ) as own:
            await until(lambda: own.owned() == frozenset(ACCOUNTS))
            pg.stop()
            await asyncio.sleep(1.0)  # the outage itself: real time on a real server
            assert own.owned() == frozenset(ACCOUNTS)
            pg.start()
            with psycopg.connect(pg.url.replace("+psycopg", ""), autocommit=True) as admin:

                def relocked() -> bool:
                    row = admin.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    ).fetchone()
                    return bool(row) and row[0] == 1 + len(ACCOUNTS)

                await until(relocked)
    assert changes == [frozenset(ACCOUNTS), frozenset()]  # the last one is the exit


def test_hold_longer_than_the_server_keeps_locks_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_s"):
        AccountOwnership(PG_URL, "x", ACCOUNTS, hold_s=3600)


# -- PostgreSQL, real processes killed with SIGKILL ---------------------------------------


class Child:
    """``python -m guardbot.ownership`` in a subprocess; reads its JSON change lines."""

    def __init__(
        self, ns: str, name: str, interval_s: float, accounts: list[str] = ACCOUNTS
    ) -> None:
        env = dict(
            os.environ,
            GUARDBOT_OWNERSHIP_NAMESPACE=ns,
            GUARDBOT_OWNERSHIP_INTERVAL_S=str(interval_s),
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "guardbot.ownership", PG_URL, name, *accounts],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.owned: frozenset[str] = frozenset()
        self.changed_at = 0.0

    def poll(self) -> None:
        """Read whatever lines are ready without blocking."""
        assert self.process.stdout is not None
        while select.select([self.process.stdout], [], [], 0)[0]:
            line = self.process.stdout.readline()
            if not line:
                return
            change = json.loads(line)
            self.owned, self.changed_at = frozenset(change["owned"]), change["t"]


@pytest.mark.postgres
async def test_sigkilled_process_accounts_are_taken_over_within_seconds() -> None:
    ns = namespace()
    children = [Child(ns, f"p{i}", interval_s=0.5) for i in range(3)]
    try:

        def covered(group: list[Child]) -> bool:
            for child in group:
                child.poll()
            sets = [c.owned for c in group]
            return set().union(*sets) == set(ACCOUNTS) and sum(map(len, sets)) == len(ACCOUNTS)

        await until(lambda: covered(children) and all(c.owned for c in children), 15.0)
        victim, survivors = children[0], children[1:]
        orphaned = victim.owned
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.process.wait()
        await until(lambda: covered(survivors), 10.0)
        failover_s = max(c.changed_at for c in survivors) - killed_at
        assert orphaned <= survivors[0].owned | survivors[1].owned
        assert failover_s < 10.0, failover_s
    finally:
        for child in children:
            child.process.kill()
            child.process.wait()


@pytest.mark.postgres
async def test_a_peer_takes_an_account_only_after_the_giver_finished_releasing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon finishes its work on a given-away account (queued actions, calls on the
    wire, reconciles that wait a read timeout) inside ``on_change``; the lock must outlive
    that work, however long it takes, or two guards could act on one position. The release
    here outlasts many ticks and the tick's own time limit (shortened to keep this fast)."""
    monkeypatch.setattr(ownership, "_TICK_TIMEOUT_S", 0.5)
    ns = namespace()
    released_at: dict[str, float] = {}
    slow_s = 10 * FAST + 0.5  # past the tick limit: a cancelled release would drop the locks

    async def slow_release(owned: frozenset[str]) -> None:
        given_away = [a for a in ACCOUNTS if a not in owned and a not in released_at]
        if given_away and len(owned) < len(ACCOUNTS):
            await asyncio.sleep(slow_s)
            for account in given_away:
                released_at[account] = time.monotonic()

    async with pg_instance(ns, "giver", on_change=slow_release) as giver:
        await until(lambda: giver.owned() == frozenset(ACCOUNTS))
        taken_at: dict[str, float] = {}
        async with pg_instance(ns, "taker") as taker:
            deadline = time.monotonic() + 10
            while not balanced([giver, taker]):
                for account in taker.owned():
                    taken_at.setdefault(account, time.monotonic())
                await asyncio.sleep(FAST / 5)
                assert time.monotonic() < deadline, "the accounts were never rebalanced"
            for account in taker.owned():
                taken_at.setdefault(account, time.monotonic())
    assert taken_at, "the taker got its share"
    for account, at in taken_at.items():
        assert account in released_at and released_at[account] <= at, account
