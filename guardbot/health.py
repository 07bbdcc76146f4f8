"""The operations HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``, and the live
page ``/view`` when a ``View`` is handed in (``guardbot.view.server``).

Loopback by default (``[health] host``/``port``; ``enabled = false`` turns it off). The daemon
owns the facts; this module only reports them. It hands in a ``readiness`` callable that
returns a ``Readiness`` snapshot (cheap: cached results, no I/O), and the server answers::

    GET /healthz  200 {"status": "ok"}                      while the process serves HTTP
    GET /readyz   200 {"status": "ready", "problems": [], ...}
                  503 {"status": "not_ready", "problems": ["account main: data is 31.0 s old
                       (bound 15 s)", ...], "database": {...}, "accounts": [...], ...}
    GET /metrics  Prometheus exposition of the default registry (guardbot.metrics), with
                  ``guardbot_ready`` (1/0) re-evaluated on each scrape

Usage::

    async with HealthServer(settings.health.host, settings.health.port, daemon.readiness):
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from guardbot.config import ConfigError
from guardbot.logs import redact
from guardbot.metrics import READY

if TYPE_CHECKING:
    from guardbot.view.server import View

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AccountReadiness:
    """What the daemon knows about one guarded account's data.

    ``data_age_s`` is the age of the account's oldest position data (``None``: nothing received
    yet); ``max_data_age_s`` is the bound past which nothing acts on it
    (``[poll] max_data_age_s``). ``polling_covering`` means the REST poller is keeping the data
    fresh on its own (for example at the fast interval while the WebSocket is down).
    ``key_refused`` is what the exchange said when it last refused the account's key
    (``None``: accepted).
    """

    account: str
    data_age_s: float | None
    max_data_age_s: float
    ws_connected: bool
    polling_covering: bool
    key_refused: str | None = None

    def problems(self) -> list[str]:
        """Why this account is not ready, one sentence each; empty when it is."""
        found = []
        if self.key_refused is not None:
            found.append(f"account {self.account}: the exchange refuses its key "
                         f"({self.key_refused})")
        if self.data_age_s is None:
            found.append(f"account {self.account}: no position data received yet")
        elif self.data_age_s > self.max_data_age_s:
            found.append(
                f"account {self.account}: data is {self.data_age_s:.1f} s old "
                f"(bound {self.max_data_age_s:g} s)"
            )
        if not self.ws_connected and not self.polling_covering:
            found.append(
                f"account {self.account}: WebSocket disconnected and REST polling not covering"
            )
        return found


@dataclass(frozen=True, slots=True)
class Readiness:
    """The daemon's answer to "can the guard act correctly right now?".

    ``spool_depth`` (audit records waiting in the local spool) is reported but is not itself a
    problem: records are safe in the spool, and an unreachable database already is one.
    """

    database_reachable: bool
    database_error: str | None = None
    accounts: tuple[AccountReadiness, ...] = ()
    spool_depth: int = 0

    def problems(self) -> list[str]:
        found = []
        if not self.database_reachable:
            found.append(f"database unreachable: {self.database_error or 'no detail'}")
        for account in self.accounts:
            found.extend(account.problems())
        return found

    @property
    def ready(self) -> bool:
        return not self.problems()

    def as_json(self) -> dict[str, object]:
        problems = self.problems()
        return {
            "status": "not_ready" if problems else "ready",
            "problems": problems,
            "database": {"reachable": self.database_reachable, "error": self.database_error},
            "accounts": [
                {
                    "account": a.account,
                    "data_age_s": a.data_age_s,
                    "max_data_age_s": a.max_data_age_s,
                    "ws_connected": a.ws_connected,
                    "polling_covering": a.polling_covering,
                    "key_refused": a.key_refused,
                    "ready": not a.problems(),
                }
                for a in self.accounts
            ],
            "spool_depth": self.spool_depth,
        }


class HealthServer:
    """aiohttp server for ``/healthz``, ``/readyz`` and ``/metrics``; an async context manager.
    ``port=0`` picks a free port (read it back from ``port`` / ``url``)."""

    def __init__(
        self,
        host: str,
        port: int,
        readiness: Callable[[], Readiness],
        *,
        registry: CollectorRegistry = REGISTRY,
        view: View | None = None,
    ) -> None:
        self.host = host
        self.view = view
        self.port = port
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> HealthServer:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        if self.view is not None:
            self.view.install(app)
        # No access log: Prometheus scrapes every few seconds and would drown the guard's lines.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"health.port: cannot listen on {self.host}:{self.port} for /healthz, /readyz "
                f"and /metrics: {exc.strerror or exc}; choose another [health] port or set "
                "enabled = false"
            ) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("health and metrics on %s (/healthz /readyz /metrics)", self.url)
        if self.view is not None:
            await self.view.start()
            log.info("live page on %s/view", self.url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.view is not None:
            await self.view.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _evaluate(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, JSON body) of /readyz; also sets the ``guardbot_ready`` gauge."""
        body: dict[str, object]
        try:
            readiness = self._readiness()
        except Exception as exc:
            # A broken probe must say so, not crash the endpoint or claim readiness.
            log.exception("readiness check failed")
            problem = redact(f"readiness check failed: {type(exc).__name__}: {exc}")
            status, body = 503, {"status": "not_ready", "problems": [problem]}
        else:
            status, body = (200 if readiness.ready else 503), readiness.as_json()
        READY.set(1 if status == 200 else 0)
        return status, body

    async def _readyz(self, request: web.Request) -> web.Response:
        status, body = self._evaluate()
        return web.json_response(body, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        self._evaluate()  # so guardbot_ready is current in every scrape
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})
