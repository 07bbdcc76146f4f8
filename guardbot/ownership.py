"""Which guardbot process guards which account (docs/architecture.md, "Invariants": one
guard per account).

Several ``guardbot run`` processes configured with the same accounts and the same PostgreSQL
audit database divide the accounts between them so that each account is guarded by exactly
one live process::

    async with AccountOwnership(db_url, instance_id, account_ids, interval_s=2.0) as own:
        while True:
            guard(own.owned())            # frozenset of account ids this process guards
            await own.wait_changed()      # or pass on_change=... to the constructor

How (no home-made consensus; PostgreSQL's lock manager does the work):

* Each instance holds one dedicated connection. On it, it takes a session advisory lock for
  its own ``instance_id`` (membership) and one per account it guards. Session advisory locks
  belong to the connection, so the server releases all of them the moment the process dies
  (its socket closes) or, if the host vanishes, when TCP keepalive gives up
  (``_SERVER_GIVES_UP_S``, set on the session below).
* Every ``interval_s`` the instance reads ``pg_locks`` once: the live instances are the
  membership locks, the owners are the account locks. It then balances: it owns at most
  ``ceil(accounts / live instances)``, releases its extras when a peer appears and takes
  accounts a live peer released, or that nobody has held for ``2 * interval_s`` (a dead
  peer's), with ``pg_try_advisory_lock``, which cannot succeed for two sessions at once.
  Failover after a process dies therefore takes two to three ``interval_s``
  (``benchmarks/failover.py``); a rebalance, one or two.
* An account being given away is first removed from ``owned()`` (and ``on_change`` awaited),
  and only unlocked on the next tick, so the caller has stopped guarding it before a peer
  can start.
* The database may go away (an audit database outage, a restart): the instance then keeps
  guarding what it owns for ``hold_s`` and, when the database is back, re-locks those
  accounts at once. Peers cannot take them meanwhile: while the server is down nobody gets
  a lock; once it is back, a peer waits ``2 * interval_s`` before taking an account nobody
  holds, longer than the previous owner needs to re-lock it. If this host is cut off while
  the server lives on, the server keeps our locks for ``_SERVER_GIVES_UP_S``, longer than
  ``hold_s`` plus one failed attempt: this side always lets go first.

With SQLite there is one instance: it owns every account, and an exclusive ``flock`` on
``<database>.lock`` (``audit.database.SqliteLock``) makes a second process on the same file
fail at start-up, naming the process that holds it.

``python -m guardbot.ownership DB_URL INSTANCE_ID ACCOUNT...`` runs one instance and prints
a JSON line on every change (used by the failover test and ``benchmarks/failover.py``).
"""

# Size (about 460 lines, AccountOwnership about 340): one lock protocol on one dedicated
# connection. Membership, balancing, holding on through an outage and re-locking share the
# connection and its timing state; split up, the timing argument above (hold_s against the
# server's keepalive and a peer's take-over wait) would no longer be checkable in one place.

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from guardbot.audit.database import DatabaseInUse, SqliteLock, sqlite_file
from guardbot.audit.errors import first_line
from guardbot.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

OnChange = Callable[[frozenset[str]], Awaitable[None] | None]

# A tick that takes longer than this is treated as a lost connection.
_TICK_TIMEOUT_S = 5.0
# The server gives up on a silent client after idle + interval * count seconds and only then
# releases its locks. Holding on through an outage (hold_s) plus one failed attempt
# (interval_s + _TICK_TIMEOUT_S) must stay below this plus a peer's takeover wait.
_KEEPALIVE_OPTIONS = (
    "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=4"
)
_SERVER_GIVES_UP_S = 30 + 5 * 4
DEFAULT_HOLD_S = 40.0

# Advisory locks taken with two int4 keys appear in pg_locks as (classid, objid, objsubid=2).
_SNAPSHOT_SQL = """
SELECT classid::bigint, objid::bigint, pid, pid = pg_backend_pid()
FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid::bigint IN (%s, %s)
"""


class OwnershipError(Exception):
    """Ownership cannot be established: fix the database URL or the instance id."""


def _lock_key(text: str) -> int:
    """A stable non-negative int4 (pg_locks shows the key as an unsigned oid)."""
    digest = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


class AccountOwnership:
    """Divides ``account_ids`` among the live guardbot instances sharing ``db_url``.

    ``db_url`` is the SQLAlchemy URL of the audit database (``postgresql+psycopg://...`` or
    ``sqlite:///...``). ``instance_id`` must be unique among live instances. Instances only
    cooperate when they share ``namespace`` (tests use it to stay apart). ``on_change`` is
    called (and awaited if it returns an awaitable) with the new owned set after every
    change; when it returns, the caller must have stopped acting on accounts that left it.
    ``hold_s`` is how long owned accounts are kept while the database is unreachable.
    Ticks, hold-on and take-over waits run on ``clock``.
    """

    def __init__(
        self,
        db_url: str,
        instance_id: str,
        account_ids: Iterable[str],
        *,
        interval_s: float = 2.0,
        namespace: str = "guardbot",
        on_change: OnChange | None = None,
        hold_s: float = DEFAULT_HOLD_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if not 0 <= hold_s <= _SERVER_GIVES_UP_S - interval_s - _TICK_TIMEOUT_S:
            raise ValueError(
                f"hold_s must be between 0 and {_SERVER_GIVES_UP_S - interval_s - _TICK_TIMEOUT_S}"
                " s, or the server could hand our accounts to a peer while we still guard them"
            )
        try:
            url = make_url(db_url)
        except ArgumentError:
            raise OwnershipError("the audit database URL is not a valid SQLAlchemy URL") from None
        self._backend = url.get_backend_name()
        if self._backend not in ("postgresql", "sqlite"):
            raise OwnershipError(
                f"account ownership needs PostgreSQL or SQLite, not {self._backend}"
            )
        # psycopg takes the libpq form of the URL; it is never logged (it may hold a password).
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._sqlite_path = sqlite_file(db_url)
        self.instance_id = instance_id
        self._accounts = {
            account: _lock_key(f"{namespace}/account/{account}")
            for account in sorted(set(account_ids))
        }
        by_key: dict[int, str] = {}
        for account, key in self._accounts.items():
            if key in by_key:
                raise OwnershipError(
                    f"accounts {by_key[key]} and {account} hash to the same lock key in"
                    f" namespace {namespace!r}: choose another namespace"
                )
            by_key[key] = account
        self._account_of_key = by_key
        # Rendezvous hashing: each instance prefers a different subset, so peers rarely
        # race for the same account and a rebalance moves few accounts.
        self._preference = {a: _lock_key(f"{instance_id}/{a}") for a in self._accounts}
        self._accounts_ns = _lock_key(f"{namespace}/accounts")
        self._members_ns = _lock_key(f"{namespace}/instances")
        self._member_key = _lock_key(f"{namespace}/instance/{instance_id}")
        self._namespace = namespace
        self._interval_s = interval_s
        self._takeover_wait_s = 2 * interval_s
        self._hold_s = hold_s
        self._clock = clock
        self._on_change = on_change
        self._notify_due = False
        self._owned: frozenset[str] = frozenset()
        # Accounts we held when the connection was lost: re-locked first when it is back.
        self._held_before: frozenset[str] = frozenset()
        self._unheld_since: dict[str, float] = {}
        self._last_holder: dict[str, int] = {}  # account -> backend pid last seen holding it
        self._last_tick = 0.0
        self._releasing: set[str] = set()
        self._live_instances = 0
        self._changed = asyncio.Event()
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sqlite_lock: SqliteLock | None = None

    # -- public API -------------------------------------------------------------------

    def owned(self) -> frozenset[str]:
        """The accounts this instance guards right now."""
        return self._owned

    @property
    def live_instances(self) -> int:
        """Live instances (this one included) seen at the last tick."""
        return self._live_instances

    async def wait_changed(self) -> frozenset[str]:
        """Wait for the next change of ``owned()`` and return the new set."""
        await self._changed.wait()
        return self._owned

    async def __aenter__(self) -> AccountOwnership:
        if self._backend == "sqlite":
            self._lock_sqlite()
            self._live_instances = 1
            await self._set_owned(frozenset(self._accounts))
            await self._notify()
            return self
        try:
            async with asyncio.timeout(_TICK_TIMEOUT_S):
                await self._connect()
                await self._tick()
                self._last_tick = self._clock.monotonic()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self._drop_connection()
            raise OwnershipError("cannot reach the audit database for account ownership: "
                                 f"{first_line(exc, named=True)}") from None
        await self._notify()
        self._task = asyncio.create_task(self._run(), name=f"ownership:{self.instance_id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._set_owned(frozenset())
        await self._notify()
        await self._drop_connection()  # closing the session releases every lock at once
        if self._sqlite_lock is not None:
            self._sqlite_lock.close()
            self._sqlite_lock = None

    # -- internals ----------------------------------------------------------------------

    def _lock_sqlite(self) -> None:
        if self._sqlite_path is None:
            return
        try:
            self._sqlite_lock = SqliteLock(self._sqlite_path)
        except DatabaseInUse as exc:
            raise OwnershipError(str(exc)) from None

    async def _run(self) -> None:
        while True:
            await self._clock.sleep(self._interval_s)
            try:
                async with asyncio.timeout(_TICK_TIMEOUT_S):
                    if self._conn is None:
                        await self._connect()
                        await self._relock()
                    await self._tick()
                    self._last_tick = self._clock.monotonic()
            except (psycopg.Error, OSError, TimeoutError, OwnershipError) as exc:
                await self._lost(exc)
            # Outside the tick's time limit: the caller's release of what we gave away may
            # take as long as it takes (calls on the wire, reconciles), and the next tick,
            # which unlocks those accounts, starts only after it.
            await self._notify()

    async def _lost(self, exc: BaseException) -> None:
        """The lock connection failed: keep what we own for ``hold_s``, then let go."""
        if self._conn is not None:
            log.warning(
                "ownership %s: lock connection lost (%s); still guarding %d accounts for up"
                " to %g s while reconnecting",
                self.instance_id,
                first_line(exc, named=True),
                len(self._owned),
                self._hold_s,
            )
            await self._drop_connection()
        self._held_before |= self._owned
        if self._owned and self._clock.monotonic() - self._last_tick >= self._hold_s:
            log.warning(
                "ownership %s: no lock database for %.0f s: guarding nothing until it is back",
                self.instance_id,
                self._clock.monotonic() - self._last_tick,
            )
            await self._set_owned(frozenset())

    async def _relock(self) -> None:
        """Right after reconnecting, take back the accounts we held before the loss (the new
        session holds nothing). One taken by a peer meanwhile is simply not ours any more."""
        conn = self._conn
        assert conn is not None
        regained = set()
        for account in sorted(self._held_before):
            cursor = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (self._accounts_ns, self._accounts[account])
            )
            row = await cursor.fetchone()
            if row and row[0]:
                regained.add(account)
        self._held_before = frozenset()
        await self._set_owned(frozenset(regained))

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=int(_TICK_TIMEOUT_S),
            application_name=f"guardbot:{self.instance_id}"[:63],
            options=_KEEPALIVE_OPTIONS,
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
        cursor = await conn.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (self._members_ns, self._member_key)
        )
        row = await cursor.fetchone()
        if not row or not row[0]:
            await conn.close()
            raise OwnershipError(
                f"instance id {self.instance_id!r} is already live in namespace"
                f" {self._namespace!r}: give every guardbot process its own instance id"
            )
        self._conn = conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._releasing.clear()  # the server releases them with the session
        # What we saw on that session says nothing about the next one.
        self._unheld_since.clear()
        self._last_holder.clear()
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _tick(self) -> None:
        conn = self._conn
        assert conn is not None
        # Accounts given away last tick: the caller has stopped guarding them by now.
        for account in sorted(self._releasing):
            await conn.execute(
                "SELECT pg_advisory_unlock(%s, %s)", (self._accounts_ns, self._accounts[account])
            )
        self._releasing.clear()

        cursor = await conn.execute(_SNAPSHOT_SQL, (self._accounts_ns, self._members_ns))
        held_by_me: set[str] = set()
        held: set[str] = set()
        live_pids: set[int] = set()
        for classid, objid, pid, mine in await cursor.fetchall():
            if classid == self._members_ns:
                live_pids.add(pid)
            elif (locked := self._account_of_key.get(objid)) is not None:
                held.add(locked)
                self._last_holder[locked] = pid
                if mine:
                    held_by_me.add(locked)
        live = len(live_pids)
        if live == 0:
            raise OwnershipError("our membership lock is gone")
        self._live_instances = live
        if held_by_me != self._owned:
            log.error(
                "ownership %s: the server says we hold %d accounts, we thought %d; trusting it",
                self.instance_id,
                len(held_by_me),
                len(self._owned),
            )

        now = self._clock.monotonic()
        for account in self._accounts:
            if account in held:
                self._unheld_since.pop(account, None)
            else:
                self._unheld_since.setdefault(account, now)
        owned = set(held_by_me)
        quota = math.ceil(len(self._accounts) / live)
        by_preference = sorted(self._accounts, key=self._preference.__getitem__, reverse=True)
        if len(owned) > quota:
            extras = [a for a in reversed(by_preference) if a in owned][: len(owned) - quota]
            owned.difference_update(extras)
            self._releasing.update(extras)
        else:
            for account in by_preference:
                if len(owned) >= quota:
                    break
                if account in held or not self._free(account, now, live_pids):
                    continue
                cursor = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)",
                    (self._accounts_ns, self._accounts[account]),
                )
                row = await cursor.fetchone()
                if row and row[0]:
                    owned.add(account)
        await self._set_owned(frozenset(owned))

    def _free(self, account: str, now: float, live_pids: set[int]) -> bool:
        """May we take this unheld account? Yes if a live peer let it go (a rebalance), or
        if nobody has held it for a while: its last owner is gone, not reconnecting."""
        released_by_peer = self._last_holder.get(account) in live_pids
        return released_by_peer or now - self._unheld_since[account] >= self._takeover_wait_s

    async def _set_owned(self, owned: frozenset[str]) -> None:
        if owned == self._owned:
            return
        gained, lost = owned - self._owned, self._owned - owned
        self._owned = owned
        log.info(
            "ownership %s: guarding %d of %d accounts (%d live instances); took %s, gave up %s",
            self.instance_id,
            len(owned),
            len(self._accounts),
            self._live_instances,
            sorted(gained),
            sorted(lost),
        )
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._notify_due = True  # on_change is awaited by _notify, outside any time limit

    async def _notify(self) -> None:
        """Await ``on_change`` with the current set, once per change. Never called under
        the tick's time limit (a cancelled release would drop the lock connection)."""
        if not self._notify_due or self._on_change is None:
            return
        self._notify_due = False
        try:
            result = self._on_change(self._owned)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("ownership %s: on_change callback failed", self.instance_id)


async def _print_changes(db_url: str, instance_id: str, accounts: list[str]) -> None:
    import json
    import time

    interval_s = float(os.environ.get("GUARDBOT_OWNERSHIP_INTERVAL_S", "2.0"))
    namespace = os.environ.get("GUARDBOT_OWNERSHIP_NAMESPACE") or "guardbot"

    def show(owned: frozenset[str]) -> None:
        print(json.dumps({"t": time.time(), "owned": sorted(owned)}), flush=True)

    async with AccountOwnership(
        db_url, instance_id, accounts, interval_s=interval_s, namespace=namespace, on_change=show
    ):
        await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 4:
        sys.exit("usage: python -m guardbot.ownership DB_URL INSTANCE_ID ACCOUNT...")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_print_changes(sys.argv[1], sys.argv[2], sys.argv[3:]))
