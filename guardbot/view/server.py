"""The live page's routes on the health server (``guardbot.health.HealthServer``)::

    GET  /view                   the page (``guardbot.view.page``): self-contained HTML
    GET  /view/state             the live state (``LiveState.snapshot``) as JSON
    GET  /view/events            the same, pushed every ``[health] push_s`` (server-sent
                                 events, ``event: state``): the page never reloads
    GET  /view/charts/{account}/{symbol}.svg   one position's chart (``guardbot.view.chart``)
    GET  /view/actions/{id}      one action's full audit record: snapshot, events, timings
                                 (``?format=json`` for JSON)
    GET  /view/login, POST /view/login         the form a browser gives the token once

Authentication. With a token configured (``[health] token`` or ``token_file``; required
beyond loopback, ``preflight.view_problem``) every route above but the login form answers
401 unless the request carries ``Authorization: Bearer <token>`` or the session cookie the
login form sets. The cookie holds an HMAC of the token, not the token; both are compared in
constant time (``hmac.compare_digest``). The token is never logged (``logs.register_secret``
masks it, and the server keeps no access log), never put in a page, a JSON body or a repr.

Cost. One task builds the state once per ``push_s`` while anybody listens and sends the same
encoded bytes to every listener (``benchmarks/view_update.py`` measures it with 1,000
positions); it also keeps the charts' samples, listened to or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from guardbot.audit import queries
from guardbot.logs import redact
from guardbot.view import page
from guardbot.view.state import LiveState, parse_position_id

log = logging.getLogger(__name__)

COOKIE = "guardbot_view"
QUEUED = 2  # updates kept per slow listener; older ones are dropped
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _session(token: SecretStr) -> str:
    """The cookie value for ``token``: an HMAC of it, so the cookie is not the token."""
    return hmac.new(token.get_secret_value().encode(), b"guardbot view session",
                    hashlib.sha256).hexdigest()  # fmt: skip


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_value)


class View:
    """The page's routes and its push loop, over one ``LiveState``."""

    def __init__(self, state: LiveState, *, token: SecretStr | None = None,
                 push_s: float = 1.0) -> None:  # fmt: skip
        self.state = state
        self._token = token
        self._session = None if token is None else _session(token)
        self.push_s = push_s
        self._listeners: set[asyncio.Queue[bytes]] = set()
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"View(token={'set' if self._token is not None else 'none'}, push_s={self.push_s})"

    # -- wiring ---------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self._root)
        app.router.add_get("/view/login", self._login_form)
        app.router.add_post("/view/login", self._login)
        for path, handler in (("/view", self._page), ("/view/state", self._state),
                              ("/view/events", self._events),
                              ("/view/charts/{account}/{symbol}.svg", self._chart),
                              ("/view/actions/{action_id}", self._action)):
            app.router.add_get(path, self._guarded(handler))

    async def start(self) -> None:
        await self.state.seed()
        self._task = asyncio.create_task(self._run(), name="view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in self._listeners:
            queue.put_nowait(b"")  # wakes the streams up to end

    async def _run(self) -> None:
        clock = self.state.guard.clock
        while True:
            try:
                self.state.sample()
                if self._listeners:
                    self.publish(await self.update())
            except Exception:  # the view must never stop the daemon
                log.exception("live view update failed")
            await clock.sleep(self.push_s)

    async def update(self) -> bytes:
        """One pushed update: the state as a server-sent event."""
        return f"event: state\ndata: {dumps(await self.state.snapshot())}\n\n".encode()

    def publish(self, update: bytes) -> None:
        for queue in self._listeners:
            if queue.full():
                queue.get_nowait()  # a slow reader gets the newest, not a backlog
            queue.put_nowait(update)

    # -- authentication -------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        if self._token is None or self._session is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode(), self._token.get_secret_value().encode()):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self._session.encode())

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.authorized(request):
                return await handler(request)
            if request.path == "/view" and "text/html" in request.headers.get("Accept", ""):
                return web.Response(status=401, text=page.login(), content_type="text/html",
                                    headers={"WWW-Authenticate": 'Bearer realm="guardbot"'})
            return web.json_response(
                {"error": "unauthorized: this page needs the [health] token "
                          "(Authorization: Bearer ...)"},
                status=401, headers={"WWW-Authenticate": 'Bearer realm="guardbot"'})

        return guarded

    async def _login_form(self, request: web.Request) -> web.Response:
        return web.Response(text=page.login(), content_type="text/html")

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = str(form.get("token", "")).strip()
        token = self._token
        if token is not None and self._session is not None and not hmac.compare_digest(
                given.encode(), token.get_secret_value().encode()):
            return web.Response(status=401, text=page.login("wrong token"),
                                content_type="text/html")
        response = web.Response(status=303, headers={"Location": "/view"})
        if self._session is not None:
            response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict",
                                path="/view")
        return response

    # -- routes ---------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/view")

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=page.PAGE, content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=dumps(await self.state.snapshot()),
                            content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})  # fmt: skip
        await response.prepare(request)
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUED)
        self._listeners.add(queue)
        try:
            await response.write(await self.update())  # at once, not a push_s later
            while True:
                update = await queue.get()
                if not update:
                    break
                await response.write(update)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(queue)
        return response

    async def _chart(self, request: web.Request) -> web.Response:
        try:
            key = parse_position_id(
                f"{request.match_info['account']}/{request.match_info['symbol']}")
            svg = self.state.chart(key)
        except (KeyError, ValueError):
            raise web.HTTPNotFound(text="no such position") from None
        return web.Response(text=svg, content_type="image/svg+xml",
                            headers={"Cache-Control": "no-store"})

    async def _action(self, request: web.Request) -> web.Response:
        action_id = request.match_info["action_id"]
        engine = self.state.guard.audit.engine
        try:
            detail = await asyncio.to_thread(queries.show_action, engine, action_id)
            record: dict[str, Any] = {"action": _redacted(detail.action),
                                      "events": [_redacted(e) for e in detail.events],
                                      "recorded": True}
        except queries.NotFound:
            kept = self.state.recent.actions.get(action_id)
            if kept is None:
                raise web.HTTPNotFound(text=f"no action with id {action_id}") from None
            # Still in the spool (the database is away or behind): what the view kept.
            record = {"action": {"id": action_id, **_redacted(kept.record)},
                      "events": [_redacted(e) for e in kept.events], "recorded": False}
        except Exception as exc:
            raise web.HTTPServiceUnavailable(
                text=f"cannot read the audit log: {redact(str(exc))}") from None
        if request.query.get("format") == "json":
            return web.Response(text=dumps(record), content_type="application/json")
        return web.Response(text=page.action_record(record, self.state.guard.name),
                            content_type="text/html")


def _redacted(row: dict[str, Any]) -> dict[str, Any]:
    """A record's values with every free text through ``logs.redact``."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, str):
            out[name] = redact(value)
        elif isinstance(value, dict):
            out[name] = {k: redact(str(v)) for k, v in value.items()}
        else:
            out[name] = value
    return out
