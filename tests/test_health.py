"""The health server over real loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from guardbot import metrics
from guardbot.audit import schema
from guardbot.audit.store import AuditLog
from guardbot.book import PositionBook
from guardbot.config import ConfigError, HealthSettings
from guardbot.domain import ActionKind, Intent, MarginMode, Position, Source
from guardbot.exchange.client import OrderlyExchange
from guardbot.executor import Executor, Job
from guardbot.health import AccountReadiness, HealthServer, Readiness
from guardbot.sim.keys import generate_key
from guardbot.sim.server import SimServer

SECRET = "4wBqpZM9xaSheZzJSMawUKKwhdpChKbZ5eu5ky4Vigw"


def fresh(account: str = "main", age: float | None = 2.0, ws: bool = True,
          polling: bool = False) -> AccountReadiness:
    return AccountReadiness(account, data_age_s=age, max_data_age_s=15,
                            ws_connected=ws, polling_covering=polling)


class Probe:
    """A readiness provider the test steers."""

    def __init__(self) -> None:
        self.state = Readiness(database_reachable=True, accounts=(fresh(),), spool_depth=0)
        self.error: Exception | None = None

    def __call__(self) -> Readiness:
        if self.error is not None:
            raise self.error
        return self.state


@pytest.fixture
async def served() -> AsyncIterator[tuple[Probe, httpx.AsyncClient]]:
    probe = Probe()
    async with HealthServer("127.0.0.1", 0, probe) as server:
        assert server.port != 0
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            yield probe, client


async def test_healthz_answers_while_the_process_runs(
    served: tuple[Probe, httpx.AsyncClient],
) -> None:
    probe, client = served
    probe.error = RuntimeError("even a broken readiness probe does not make it unhealthy")
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_ready(served: tuple[Probe, httpx.AsyncClient]) -> None:
    _, client = served
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "problems": [],
        "database": {"reachable": True, "error": None},
        "accounts": [{"account": "main", "data_age_s": 2.0, "max_data_age_s": 15,
                      "ws_connected": True, "polling_covering": False, "key_refused": None,
                      "ready": True}],
        "spool_depth": 0,
    }


@pytest.mark.parametrize(
    ("state", "problems"),
    [
        (
            Readiness(False, "connection refused", (fresh(),), spool_depth=12),
            ["database unreachable: connection refused"],
        ),
        (
            Readiness(True, accounts=(fresh(), fresh("alt", age=31.04))),
            ["account alt: data is 31.0 s old (bound 15 s)"],
        ),
        (
            Readiness(True, accounts=(fresh(age=None),)),
            ["account main: no position data received yet"],
        ),
        (
            Readiness(True, accounts=(fresh(ws=False),)),
            ["account main: WebSocket disconnected and REST polling not covering"],
        ),
    ],
)
async def test_readyz_says_exactly_what_is_wrong(
    served: tuple[Probe, httpx.AsyncClient], state: Readiness, problems: list[str]
) -> None:
    probe, client = served
    probe.state = state
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["problems"]) == ("not_ready", problems)
    assert body["spool_depth"] == state.spool_depth


async def test_polling_covers_a_disconnected_websocket(
    served: tuple[Probe, httpx.AsyncClient],
) -> None:
    probe, client = served
    probe.state = Readiness(True, accounts=(fresh(ws=False, polling=True),), spool_depth=3)
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["spool_depth"] == 3


async def test_a_failing_probe_is_not_ready_and_redacted(
    served: tuple[Probe, httpx.AsyncClient],
) -> None:
    probe, client = served
    probe.error = ValueError(f"cannot sign with {SECRET}")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "problems": ["readiness check failed: ValueError: cannot sign with [redacted]"],
    }


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_metrics_exposes_the_guard_metrics_and_values_move(
    served: tuple[Probe, httpx.AsyncClient],
) -> None:
    _, client = served
    labels = {"account": "0xmetrics", "policy": "topup", "kind": "ADD", "outcome": "succeeded"}
    before = (await client.get("/metrics")).text
    metrics.ACTIONS.labels(**labels).inc()
    metrics.MARGIN_MOVED.labels("0xmetrics", "ADD").inc(float(Decimal("120.50")))
    metrics.SPOOL_DEPTH.set(7)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = response.text
    assert (sample(before, "guardbot_actions_total", labels) or 0) + 1 == sample(
        after, "guardbot_actions_total", labels)
    assert sample(after, "guardbot_margin_usdc_total",
                  {"account": "0xmetrics", "kind": "ADD"}) == pytest.approx(120.5)
    assert sample(after, "guardbot_audit_spool_depth", {}) == 7
    for name in ("guardbot_data_age_seconds", "guardbot_exchange_latency_seconds",
                 "guardbot_ws_reconnects_total", "guardbot_budget_left_usdc"):
        assert f"# TYPE {name} " in after


async def test_metrics_speaks_openmetrics_when_asked(
    served: tuple[Probe, httpx.AsyncClient],
) -> None:
    _, client = served
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_loopback_by_default_and_a_taken_port_is_a_clear_error() -> None:
    defaults = HealthSettings()
    assert (defaults.host, defaults.enabled) == ("127.0.0.1", True)
    ready: Callable[[], Readiness] = lambda: Readiness(True)  # noqa: E731
    async with HealthServer(defaults.host, 0, ready) as first:
        assert first.url.startswith("http://127.0.0.1:")
        with pytest.raises(ConfigError, match=rf"health.port: cannot listen on 127.0.0.1:"
                                              rf"{first.port} .*enabled = false"):
            async with HealthServer("127.0.0.1", first.port, ready):
                pass


class BookProbe:
    """A readiness provider fed by the real PositionBook on an injected clock, as the daemon's
    is: an account's data age is that of its least recently confirmed position."""

    def __init__(self, book: PositionBook, account_id: str) -> None:
        self.book, self.account_id, self.now_ms = book, account_id, 0

    def __call__(self) -> Readiness:
        ages = [self.book.age_ms(key, self.now_ms) for key in self.book
                if key[0] == self.account_id]
        age_s = max((a for a in ages if a is not None), default=None)
        data_age = None if age_s is None else age_s / 1000
        if data_age is not None:
            metrics.DATA_AGE.labels(self.account_id).set(data_age)
        return Readiness(True, accounts=(AccountReadiness(
            self.account_id, data_age, max_data_age_s=15, ws_connected=True,
            polling_covering=False),))


def pushed(account_id: str, seq: int, received_ms: int) -> Position:
    return Position(
        account_id=account_id, symbol="PERP_ETH_USDC", margin_mode=MarginMode.ISOLATED,
        qty=Decimal("1.5"), average_open_price=Decimal(2000), cost_position=Decimal(3000),
        mark_price=Decimal(1990), margin=Decimal(300), leverage=10,
        unsettled_pnl=Decimal(-15), est_liq_price=Decimal("1830.5"), mmr=Decimal("0.05"),
        imr=Decimal("0.1"), last_sum_unitary_funding=Decimal(0), seq=seq,
        exchange_ms=received_ms - 5, received_ms=received_ms, source=Source.WS,
    )


async def test_readyz_turns_not_ready_when_pushes_stop_and_data_goes_stale() -> None:
    account = "0x" + "7" * 64
    book = PositionBook()
    probe = BookProbe(book, account)
    async with (HealthServer("127.0.0.1", 0, probe) as server,
                httpx.AsyncClient(base_url=server.url) as client):
        assert (await client.get("/readyz")).json()["problems"] == [
            f"account {account}: no position data received yet"]

        book.apply(pushed(account, seq=1, received_ms=1_000))
        probe.now_ms = 3_000
        assert (await client.get("/readyz")).status_code == 200

        probe.now_ms = 17_000  # the pushes stop; 16 s later the data is past its 15 s bound
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["problems"] == [
            f"account {account}: data is 16.0 s old (bound 15 s)"]
        scraped = (await client.get("/metrics")).text
        assert sample(scraped, "guardbot_data_age_seconds", {"account": account}) == 16
        assert sample(scraped, "guardbot_ready", {}) == 0

        book.apply(pushed(account, seq=2, received_ms=17_000))  # pushes resume
        assert (await client.get("/readyz")).status_code == 200
        assert sample((await client.get("/metrics")).text, "guardbot_ready", {}) == 1


def family_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


async def test_metrics_move_when_the_guard_acts(tmp_path: Path) -> None:
    """The real executor adds margin on the simulated exchange over loopback; the scrape
    before and after shows the action, the USDC moved, the exchange call and the snapshot."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    schema.upgrade(url)
    audit = await AuditLog.open(url, tmp_path / "spool")
    await audit.start_run("test", "hash", "host")
    key, secret = generate_key()
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = sim.engine.create_account(key, "read,trading", Decimal(10000))
        sim.engine.open_position(account, "PERP_ETH_USDC", "ISOLATED", Decimal(1), 10)
        sim.flush()
        urls = {"rest_url": sim.rest_url, "public_ws_url": sim.public_ws_url,
                "private_ws_url": sim.private_ws_url}
        async with (
            OrderlyExchange(account, key, SecretStr(secret), urls) as exchange,
            HealthServer("127.0.0.1", 0, lambda: Readiness(True)) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            before = (await client.get("/metrics")).text
            position = await exchange.get_position("PERP_ETH_USDC", MarginMode.ISOLATED)
            assert position is not None
            intent = Intent(account, "PERP_ETH_USDC", ActionKind.ADD, Decimal("25.5"), "topup",
                            "distance below trigger")
            executor = Executor({account: exchange}, audit)
            worker = asyncio.create_task(executor.run())
            await executor.submit(Job(intent, position, data_age_ms=0))
            # Scrape until the action shows up: the executor has no completion signal.
            async with asyncio.timeout(5):
                after = (await client.get("/metrics")).text
                while family_total(after, "guardbot_actions_total", account=account) == 0:
                    await asyncio.sleep(0.01)
                    after = (await client.get("/metrics")).text
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    await audit.aclose()
    moved = {
        name: family_total(after, name, **labels) - family_total(before, name, **labels)
        for name, labels in [
            ("guardbot_actions_total", {"account": account, "policy": "topup", "kind": "ADD",
                                        "outcome": "succeeded"}),
            ("guardbot_margin_usdc_total", {"account": account, "kind": "ADD"}),
            ("guardbot_snapshots_total", {"account": account, "source": "REST"}),
        ]
    }
    assert moved == {"guardbot_actions_total": 1, "guardbot_margin_usdc_total": 25.5,
                     "guardbot_snapshots_total": 1}
    assert family_total(after, "guardbot_exchange_latency_seconds_count") > family_total(
        before, "guardbot_exchange_latency_seconds_count")
