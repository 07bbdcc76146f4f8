"""The fault suite's harness: the simulated exchange and the daemon as real processes, and the
comparison of what the exchange did with what the audit log says.

One fault run::

    with Sim(tmp) as sim:
        config = write_config(tmp, sim, audit_url)
        migrate(audit_url)
        sim.faults(lost_response_rate=0.3)
        with Daemon(config, tmp) as daemon:
            ... drive the marks (sim.pin), daemon.kill(), daemon.start() ...
        row = compare("lost responses", sim.state(), audit_actions(audit_url), daemon.worst_age_s)

``compare`` matches the exchange's ledger of applied margin changes (``margin_changes``, see
``simproc.py``) with the audit log's actions by (account, symbol, kind, amount):

* attempted  actions the daemon decided and did not dry-run (audit ``actions`` rows);
* applied    margin changes the exchange applied;
* recorded   actions the audit log says were applied (SUCCEEDED, or RECONCILED applied=true);
* duplicates changes applied beyond the actions decided: one decision applied twice;
* lost       applied changes the audit log does not record as applied, or records as
             applied that the exchange never applied, plus actions left without an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select as sql_select

from guardbot.audit.database import create_audit_engine
from guardbot.audit.tables import Action, ActionEvent

from .pgcluster import free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
APPLIED_EVENTS = {"SUCCEEDED", "VERIFIED"}
NOT_APPLIED_EVENTS = {"REJECTED", "FAILED", "SKIPPED", "DRY_RUN"}


@dataclass
class FaultRow:
    fault: str
    attempted: int
    applied: int
    recorded: int
    duplicates: int
    lost: int
    worst_age_s: float | None
    notes: list[str] = field(default_factory=list)


REPORT: list[FaultRow] = []


def report_table(rows: list[FaultRow]) -> str:
    header = ("fault", "attempted", "applied", "recorded", "duplicates", "lost", "worst age s")
    lines = [
        (
            r.fault,
            str(r.attempted),
            str(r.applied),
            str(r.recorded),
            str(r.duplicates),
            str(r.lost),
            "-" if r.worst_age_s is None else f"{r.worst_age_s:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


# -- the simulated exchange ------------------------------------------------------------------


class Sim:
    """``simproc.py`` in a subprocess; admin calls over loopback HTTP."""

    def __init__(
        self,
        tmp: Path,
        *,
        accounts: int = 2,
        symbols: str = "PERP_ETH_USDC",
        speed: float = 1.0,
        seed: int = 7,
        notional: str = "5000",
        host: str = "127.0.0.1",
    ) -> None:
        self.log = tmp / "sim.log"
        self._args = [
            sys.executable, str(HERE / "simproc.py"), "--accounts", str(accounts),
            "--symbols", symbols, "--speed", str(speed), "--seed", str(seed),
            "--notional", notional, "--host", host,
        ]  # fmt: skip
        self.rest_url = ""
        self.accounts: list[dict[str, str]] = []
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Sim:
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                self._args, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 20)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.__exit__()
            raise RuntimeError(f"the simulator did not start: {self.log.read_text()[-2000:]}")
        info = json.loads(line)
        self.rest_url, self.accounts = info["rest_url"], info["accounts"]
        self.http = httpx.Client(base_url=self.rest_url, timeout=10)
        return self

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(AttributeError):
            self.http.close()

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def faults(self, **settings: float) -> None:
        """Switch faults on (or off with 0); unnamed ones keep their setting."""
        self._admin("POST", "/sim/faults", settings)

    def no_faults(self) -> None:
        self.faults(latency_ms=0, error_rate=0, rate_limit_rate=0, lost_response_rate=0,
                    ws_drop_every_s=0)  # fmt: skip

    def pin(self, symbol: str, price: Decimal | None) -> None:
        self._admin("POST", "/sim/marks",
                    {"symbol": symbol, "price": None if price is None else str(price)})  # fmt: skip

    def inject(self, account_id: str, text: str) -> int:
        """Push ``text`` as is down the account's private streams; returns how many."""
        sent: int = self._admin("POST", "/sim/inject", {"account_id": account_id, "text": text})[
            "sent"
        ]
        return sent

    def mark(self, symbol: str) -> Decimal:
        return Decimal(self.state()["marks"][symbol])

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", "/sim/state")
        return result

    def secrets(self) -> list[str]:
        """The base58 part of every account's secret (what must never leak)."""
        return [a["secret"].removeprefix("ed25519:") for a in self.accounts]


# -- a TCP proxy that can go silent ---------------------------------------------------------


class Proxy:
    """Forwards loopback TCP to ``target_port`` in a thread of its own. While ``silent`` is
    set, WebSocket connections (those opening with ``GET /ws/`` or ``GET /v2/ws/``) carry
    nothing in either direction but stay open: a stream that goes quiet without closing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.silent = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            first = await client_r.read(65536)
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        websocket = first.startswith((b"GET /ws/", b"GET /v2/ws/"))
        server_w.write(first)
        await asyncio.gather(
            self._pipe(client_r, server_w, websocket),
            self._pipe(server_r, client_w, websocket),
            return_exceptions=True,
        )
        for writer in (client_w, server_w):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    websocket: bool) -> None:  # fmt: skip
        while data := await reader.read(65536):
            if websocket and self.silent.is_set():
                continue  # swallowed: the peer hears nothing, the socket stays open
            writer.write(data)
            await writer.drain()
        writer.close()


# -- the daemon ------------------------------------------------------------------------------


def write_config(
    tmp: Path,
    sim: Sim,
    audit_url: str,
    *,
    trigger: str = "0.08",
    target: str = "0.09",
    poll_s: float = 1.0,
    max_age_s: float = 5.0,
    extra: str = "",
    ws_port: int | None = None,
    per_account_per_day: str = "1000000",
) -> Path:
    """A ``guardbot run`` config for the simulator's accounts (mode 600: it holds secrets).
    ``ws_port`` sends the WebSockets elsewhere (a ``Proxy``)."""
    port = ws_port or sim.rest_url.rsplit(":", 1)[1]
    accounts = "".join(
        f'\n[[accounts]]\nname = "acct{i}"\naccount_id = "{a["account_id"]}"\n'
        f'orderly_key = "{a["key"]}"\norderly_secret = "{a["secret"]}"\n'
        for i, a in enumerate(sim.accounts)
    )
    text = f"""
[exchange]
preset = "sim"
rest_url = "{sim.rest_url}"
public_ws_url = "ws://127.0.0.1:{port}/ws/stream/{{account_id}}"
private_ws_url = "ws://127.0.0.1:{port}/v2/ws/private/stream/{{account_id}}"
timeout_s = 2.0

[audit]
url = "{audit_url}"
spool_dir = "{tmp / "spool"}"

[poll]
interval_s = {poll_s}
fast_interval_s = {min(poll_s, 0.5)}
max_data_age_s = {max_age_s}

[budgets]
per_action = "100000"
per_position_per_day = "1000000"
per_account_per_day = "{per_account_per_day}"
cooldown_s = 0
min_amount = "0.01"

[health]
port = {free_port()}

[log]
level = "INFO"
{extra}
[[policies]]
use = "topup"
params = {{ trigger = "{trigger}", target = "{target}" }}
{accounts}"""
    path = tmp / "guardbot.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def guardbot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a ``guardbot`` command to completion."""
    return subprocess.run(
        [str(BIN / "guardbot"), *args], capture_output=True, text=True, timeout=timeout
    )


def migrate(audit_url: str) -> None:
    done = guardbot("db", "upgrade", "--db", audit_url)
    if done.returncode != 0:
        raise RuntimeError(f"guardbot db upgrade failed: {done.stderr}")


class Daemon:
    """``guardbot run --config`` as a subprocess, its output appended to ``daemon.log``.

    While it runs, a thread samples ``guardbot_data_age_seconds`` from its metrics endpoint;
    ``worst_age_s`` is the highest value seen."""

    def __init__(self, config: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = tmp / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        match = re.search(r"\[health\]\nport = (\d+)", config.read_text())
        self.metrics_url = f"http://127.0.0.1:{match.group(1)}/metrics" if match else None
        self.process: subprocess.Popen[bytes] | None = None
        self.worst_age_s: float | None = None
        self.starts = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "guardbot"), "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.starts += 1
        if self._sampler is None and self.metrics_url:
            self._sampling.set()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        """SIGTERM and wait for the orderly shutdown; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the daemon did not stop within 20 s of SIGTERM") from None

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._sampling.clear()
        running = self.alive()  # not one the test killed
        try:
            code = self.stop()
        finally:
            if self._sampler is not None:
                self._sampler.join(5)
        if running:
            assert code == 0, f"exit code {code} after SIGTERM:\n{self.log_text()[-3000:]}"

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Until ``/readyz`` answers 200 listing every account (all owned and fresh) or,
        while the health endpoint is not served, until every account's streams have
        resynchronised over REST since this start."""
        assert self.metrics_url is not None
        url = self.metrics_url.replace("/metrics", "/readyz")
        logged_before = len(self.log_text())
        accounts = self.config.read_text().count("[[accounts]]")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"the daemon exited:\n{self.log_text()[-3000:]}")
            try:
                answer = httpx.get(url, timeout=1)
                # Ready, and guarding every account (ownership takes them a moment after
                # start-up; /readyz lists the owned ones).
                if answer.status_code == 200 and len(answer.json()["accounts"]) == accounts:
                    return
            except httpx.ConnectError:
                since = self.log_text()[logged_before:]
                # "private stream of <name> connected: ..." (routine) or "... gap for ..."
                resynced = since.count("private stream of ") + since.count("private stream gap")
                if resynced >= accounts:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(
            f"the daemon was not ready in {timeout_s} s:\n{self.log_text()[-3000:]}"
        )

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled metric from ``/metrics`` (``None`` if unavailable)."""
        assert self.metrics_url is not None
        try:
            text = httpx.get(self.metrics_url, timeout=1).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        return None

    def owned(self) -> set[str]:
        """The names of the accounts this daemon guards (``/readyz`` lists them)."""
        assert self.metrics_url is not None
        try:
            answer = httpx.get(self.metrics_url.replace("/metrics", "/readyz"), timeout=1)
            return {a["account"] for a in answer.json()["accounts"]}
        except (httpx.HTTPError, ValueError, KeyError):
            return set()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _sample(self) -> None:
        assert self.metrics_url is not None
        while self._sampling.is_set():
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(self.metrics_url, timeout=1).text
                for line in text.splitlines():
                    if line.startswith("guardbot_data_age_seconds{"):
                        age = float(line.rsplit(" ", 1)[1])
                        if self.worst_age_s is None or age > self.worst_age_s:
                            self.worst_age_s = age
            time.sleep(0.2)


# -- the audit log against the exchange -------------------------------------------------------


@dataclass(frozen=True)
class Audited:
    id: str
    account_id: str
    symbol: str
    kind: str
    amount: Decimal
    dry_run: bool
    events: tuple[str, ...]
    applied: bool | None  # None: no outcome recorded
    data_age_ms: int = 0
    margin: Decimal = Decimal(0)  # the margin of the snapshot the decision saw

    @property
    def key(self) -> tuple[str, str, str, Decimal]:
        return (self.account_id, self.symbol, self.kind, self.amount)


def audit_actions(url: str) -> list[Audited]:
    """Every action with its events, in event order."""
    engine = create_audit_engine(url)
    try:
        with engine.connect() as conn:
            actions = conn.execute(sql_select(Action).order_by(Action.time)).all()
            events = conn.execute(
                sql_select(ActionEvent.action_id, ActionEvent.kind, ActionEvent.detail).order_by(
                    ActionEvent.account_id, ActionEvent.seq
                )
            ).all()
    finally:
        engine.dispose()
    by_action: dict[str, list[tuple[str, dict[str, str] | None]]] = {}
    for action_id, kind, detail in events:
        by_action.setdefault(action_id, []).append((kind, detail))
    result = []
    for action in actions:
        lifecycle = by_action.get(action.id, [])
        result.append(
            Audited(
                id=action.id,
                account_id=action.account_id,
                symbol=action.symbol,
                kind=action.kind,
                amount=Decimal(action.amount),
                dry_run=bool(action.dry_run),
                events=tuple(kind for kind, _ in lifecycle),
                applied=_outcome(lifecycle),
                data_age_ms=int(action.data_age_ms),
                margin=Decimal(action.margin),
            )
        )
    return result


def _outcome(lifecycle: list[tuple[str, dict[str, str] | None]]) -> bool | None:
    """Applied, not applied, or unknown, from the last event that says."""
    for kind, detail in reversed(lifecycle):
        if kind in APPLIED_EVENTS:
            return True
        if kind == "RECONCILED":
            return (detail or {}).get("applied") == "true"
        if kind in NOT_APPLIED_EVENTS:
            return False
    return None


def compare(fault: str, state: dict[str, Any], actions: list[Audited],
            worst_age_s: float | None) -> FaultRow:  # fmt: skip
    """The table row for one run (see the module docstring); also checks the sums."""
    ledger = Counter(
        (c["account_id"], c["symbol"], c["kind"], Decimal(c["amount"]))
        for c in state["margin_changes"]
    )
    live = [a for a in actions if not a.dry_run]
    intended = Counter(a.key for a in live)
    recorded = Counter(a.key for a in live if a.applied)
    duplicates = sum(max(0, n - intended[k]) for k, n in ledger.items())
    mismatched = sum(
        abs(min(ledger[k], intended[k]) - recorded[k]) for k in set(ledger) | set(recorded)
    )
    unfinished = [a for a in live if a.applied is None]
    if worst_age_s is None and live:
        # No metrics endpoint: the oldest data any action was based on.
        worst_age_s = max(a.data_age_ms for a in live) / 1000
    row = FaultRow(
        fault=fault,
        attempted=len(live),
        applied=sum(ledger.values()),
        recorded=sum(recorded.values()),
        duplicates=duplicates,
        lost=mismatched + len(unfinished),
        worst_age_s=worst_age_s,
    )
    applied_sum = sum((_signed(k) * n for k, n in ledger.items()), Decimal(0))
    recorded_sum = sum((_signed(k) * n for k, n in recorded.items()), Decimal(0))
    if applied_sum != recorded_sum:
        row.notes.append(f"exchange applied {applied_sum} USDC, audit says {recorded_sum}")
    if unfinished:
        row.notes.append(f"{len(unfinished)} actions without an outcome: {unfinished[:3]}")
    for key in sorted(set(ledger) | set(intended), key=str):
        if ledger[key] != recorded[key] or ledger[key] > intended[key]:
            row.notes.append(
                f"{key}: applied {ledger[key]}x, decided {intended[key]}x, "
                f"recorded applied {recorded[key]}x"
            )
    return row


def _signed(key: tuple[str, str, str, Decimal]) -> Decimal:
    return key[3] if key[2] == "ADD" else -key[3]


def scan_for_secrets(secrets: list[str], texts: dict[str, str]) -> list[str]:
    """Where any secret (or a long piece of it) appears: ``["daemon.log", ...]``."""
    return [
        name
        for name, text in texts.items()
        if any(piece in text for secret in secrets for piece in (secret[:16], secret[-16:]))
    ]


def leak_sources(tmp: Path, daemon: Daemon, audit_url: str) -> dict[str, str]:
    """Everything a run left behind that must not hold a secret: the daemon's log, every
    audit row, and the local spool files (the config file is the one place it belongs)."""
    texts = {"daemon log": daemon.log_text(), "audit database": audit_dump(audit_url)}
    spool = tmp / "spool"
    if spool.exists():
        for path in sorted(spool.rglob("*")):
            if path.is_file():
                texts[f"spool {path.name}"] = path.read_bytes().decode(errors="replace")
    return texts


def audit_dump(url: str) -> str:
    """Every row of every audit table as text, for the secret scan."""
    engine = create_audit_engine(url)
    try:
        with engine.connect() as conn:
            from guardbot.audit.tables import Base

            parts = []
            for table in Base.metadata.sorted_tables:
                for row in conn.execute(table.select()):
                    parts.append(repr(tuple(row)))
            return "\n".join(parts)
    finally:
        engine.dispose()
