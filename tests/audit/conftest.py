"""The audit suite runs every test on SQLite and on the real PostgreSQL server.

Each PostgreSQL test gets a schema of its own (dropped afterwards), selected through the
connection's ``search_path``, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import PG_URL
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError

from guardbot.audit import schema
from guardbot.audit.database import create_audit_engine
from guardbot.audit.store import ActionRecord, AuditLog, EventKind
from guardbot.clock import ManualClock
from guardbot.domain import ActionKind, MarginMode, Source

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    name = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture
def url(empty_url: str) -> str:
    """The URL of a database migrated to head."""
    schema.upgrade(empty_url)
    return empty_url


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


ACCOUNT = "0x" + "a1" * 32
OTHER = "0x" + "b2" * 32
T0 = 1_763_800_000_000  # 2025-11-22T08:26:40Z


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start_ms=T0)


def action(**overrides: Any) -> ActionRecord:
    """An ActionRecord with plausible values; override any field."""
    values: dict[str, Any] = {
        "account_id": ACCOUNT,
        "symbol": "PERP_ETH_USDC",
        "margin_mode": MarginMode.ISOLATED,
        "policy": "topup",
        "kind": ActionKind.ADD,
        "amount": Decimal("25.5"),
        "reason": "distance 4.1% < trigger 5%",
        "dry_run": False,
        "mark_price": Decimal("3012.34"),
        "margin": Decimal("150.000000"),
        "qty": Decimal("-1.25"),
        "liquidation_price": Decimal("3150.5"),
        "distance": Decimal("0.041"),
        "data_age_ms": 240,
        "source": Source.WS,
    }
    values.update(overrides)
    return ActionRecord(**values)


class Outage:
    """A switchable database outage: while ``down``, every statement on ``engine`` fails the
    way a lost connection does."""

    def __init__(self, engine: Engine) -> None:
        self.down = False
        self.refused = 0
        event.listen(engine, "before_cursor_execute", self._check)

    def _check(self, connection: Any, cursor: Any, statement: str, *_: Any) -> None:
        if self.down:
            self.refused += 1
            raise OperationalError(statement, None, ConnectionRefusedError("test outage"))


HOUR = 3_600_000
DAY = 24 * HOUR
THIRD = "0x" + "c3" * 32


@pytest.fixture
async def history(url: str, tmp_path: Path) -> dict[str, str]:
    """Six actions over two UTC days (see the table below), written through AuditLog.

    =====  =======  ======  ======  ======  ====  ==================================
    name   account  symbol  policy  kind    amt   events (latency)
    =====  =======  ======  ======  ======  ====  ==================================
    a1     ACCOUNT  ETH     topup   ADD     10    SENT SUCCEEDED(100) VERIFIED   T0
    a2     ACCOUNT  ETH     topup   ADD     20    SENT REJECTED(50)              +1h
    a3     ACCOUNT  BTC     sweep   REDUCE  5     SENT SUCCEEDED(200)            +2h
    a4     OTHER    ETH     topup   ADD     7     SENT UNCERTAIN(3000) RECONCILED +1d
    a5     OTHER    ETH     topup   ADD     3     DRY_RUN (dry run)              +1d1h
    a6     ACCOUNT  ETH     sweep   REDUCE  2     SENT FAILED(10)                +1d2h
    =====  =======  ======  ======  ======  ====  ==================================
    """
    clock = ManualClock(start_ms=T0)
    log = await AuditLog.open(url, tmp_path / "history-spool", clock=clock)
    await log.start_run("0.1.0", "cafe", "host-1")
    ids: dict[str, str] = {}
    plan: list[tuple[str, int, dict[str, Any], list[tuple[EventKind, dict[str, Any]]]]] = [
        ("a1", 0, {"amount": Decimal(10)},
         [(EventKind.SENT, {}), (EventKind.SUCCEEDED, {"latency_ms": 100}),
          (EventKind.VERIFIED, {"detail": {"verified": "true"}})]),
        ("a2", HOUR, {"amount": Decimal(20)},
         [(EventKind.SENT, {}),
          (EventKind.REJECTED, {"latency_ms": 50, "code": -1, "message": "not enough"})]),
        ("a3", 2 * HOUR, {"amount": Decimal(5), "symbol": "PERP_BTC_USDC", "policy": "sweep",
                          "kind": ActionKind.REDUCE},
         [(EventKind.SENT, {}), (EventKind.SUCCEEDED, {"latency_ms": 200})]),
        ("a4", DAY, {"amount": Decimal(7), "account_id": OTHER},
         [(EventKind.SENT, {}), (EventKind.UNCERTAIN, {"latency_ms": 3000}),
          (EventKind.RECONCILED, {"detail": {"applied": "true"}})]),
        ("a5", DAY + HOUR, {"amount": Decimal(3), "account_id": OTHER, "dry_run": True},
         [(EventKind.DRY_RUN, {})]),
        ("a6", DAY + 2 * HOUR, {"amount": Decimal(2), "policy": "sweep",
                                "kind": ActionKind.REDUCE},
         [(EventKind.SENT, {}), (EventKind.FAILED, {"latency_ms": 10})]),
    ]  # fmt: skip
    for name, offset, fields, events in plan:
        clock.set_ms(T0 + offset)
        record = action(**fields)
        ids[name] = await log.record_action(record)
        for kind, extra in events:
            clock.advance(0.001)
            await log.record_event(ids[name], record.account_id, kind, **extra)
    await log.record_observation(THIRD, "PERP_ETH_USDC", "liquidation", {"qty": "-1"})
    await log.aclose()
    return ids


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut (every connection dropped, new
    ones closed at once) and restore: a real network outage, without touching the server
    others share."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._sockets |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self._listener.close()


@pytest.fixture
def engine(url: str, history: dict[str, str]) -> Iterator[Engine]:
    """An engine on the database holding ``history``."""
    engine = create_audit_engine(url)
    yield engine
    engine.dispose()
