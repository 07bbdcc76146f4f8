"""The live page's routes on the real health server over loopback HTTP: the token is
required and refused as configured, updates are pushed, and no secret reaches a page."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from factories import LONG
from pydantic import SecretStr

from guardbot.config import ConfigError, HealthSettings
from guardbot.health import HealthServer
from guardbot.preflight import view_problem
from guardbot.view.server import COOKIE, View
from view.helpers import KEY, SECRET, Watched

TOKEN = "view-token-0123456789abcdef"


@pytest.fixture
async def client(watched: Watched) -> AsyncIterator[httpx.AsyncClient]:
    """The page with a token, over a guard holding LONG that just fell into its trigger."""
    await watched.snapshot(LONG)
    watched.clock.advance(1)
    await watched.mark("86")
    await watched.guard.audit.flush()
    view = View(watched.state, token=SecretStr(TOKEN))
    async with (HealthServer("127.0.0.1", 0, watched.daemon.readiness, view=view) as server,
                httpx.AsyncClient(base_url=server.url, timeout=5) as http):
        yield http


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


GUARDED = ["/view", "/view/state", "/view/events", "/view/actions/x",
           f"/view/charts/{LONG.account_id}/{LONG.symbol}.svg"]


@pytest.mark.parametrize("path", GUARDED)
async def test_every_route_refuses_a_request_without_or_with_a_wrong_token(
    client: httpx.AsyncClient, path: str,
) -> None:
    for headers in ({}, bearer("wrong-token-0123456789"), bearer(TOKEN + "x"),
                    {"Authorization": TOKEN}, {"Cookie": f"{COOKIE}={TOKEN}"}):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401, (path, headers)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.text


async def test_the_right_token_opens_the_state_and_the_page(client: httpx.AsyncClient) -> None:
    state = (await client.get("/view/state", headers=bearer())).json()
    (position,) = state["positions"]
    assert position["zone"] == "trigger" and position["mark"] == "86"
    page = await client.get("/view", headers=bearer())
    assert page.status_code == 200 and 'EventSource("/view/events")' in page.text
    assert "<script src" not in page.text and "http://" not in page.text
    assert "https://" not in page.text, "self-contained: nothing from a CDN"


async def test_a_browser_logs_in_once_with_a_cookie_that_is_not_the_token(
    client: httpx.AsyncClient,
) -> None:
    form = await client.get("/view", headers={"Accept": "text/html"})
    assert form.status_code == 401 and 'name="token"' in form.text
    wrong = await client.post("/view/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert COOKIE not in wrong.cookies
    right = await client.post("/view/login", data={"token": TOKEN})
    assert right.status_code == 303 and right.headers["Location"] == "/view"
    session = right.cookies[COOKIE]
    assert session and TOKEN not in session
    assert "HttpOnly" in right.headers["Set-Cookie"]
    client.cookies.set(COOKIE, session)
    assert (await client.get("/view/state")).status_code == 200


async def test_updates_are_pushed_as_server_sent_events(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/view/events", headers=bearer()) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await anext(lines) == "event: state"
        data = await anext(lines)
    state = json.loads(data.removeprefix("data: "))
    assert state["positions"][0]["zone"] == "trigger"


async def test_an_action_links_to_its_full_audit_record(client: httpx.AsyncClient) -> None:
    (action,) = (await client.get("/view/state", headers=bearer())).json()["actions"]
    record = await client.get(action["url"], headers=bearer())
    assert record.status_code == 200
    assert "distance 0.0208 below trigger 0.05" in record.text
    assert "INTENT" in record.text and "since decided" in record.text
    as_json = (await client.get(action["url"] + "?format=json", headers=bearer())).json()
    assert as_json["recorded"] and as_json["action"]["mark_price"].startswith("86")
    assert [e["kind"] for e in as_json["events"]] == ["INTENT"]
    missing = await client.get("/view/actions/no-such-id", headers=bearer())
    assert missing.status_code == 404


async def test_a_chart_per_position(client: httpx.AsyncClient) -> None:
    chart = await client.get(f"/view/charts/{LONG.account_id}/{LONG.symbol}.svg",
                             headers=bearer())
    assert chart.status_code == 200 and chart.headers["Content-Type"].startswith("image/svg+xml")
    assert chart.text.startswith("<svg") and 'class="action"' in chart.text
    unknown = await client.get(f"/view/charts/{LONG.account_id}/PERP_NONE_USDC.svg",
                               headers=bearer())
    assert unknown.status_code == 404


async def test_no_page_json_or_repr_carries_a_secret(
    client: httpx.AsyncClient, watched: Watched, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    (action,) = (await client.get("/view/state", headers=bearer())).json()["actions"]
    bodies = [(await client.get(path, headers=bearer())).text for path in (
        "/view", "/view/state", action["url"], action["url"] + "?format=json",
        f"/view/charts/{LONG.account_id}/{LONG.symbol}.svg")]
    bodies.append(repr(View(watched.state, token=SecretStr(TOKEN))))
    bodies.append(repr(HealthSettings(token=SecretStr(TOKEN))))
    bodies.extend(record.getMessage() for record in caplog.records)
    for body in bodies:
        for secret in (TOKEN, SECRET, SECRET.removeprefix("ed25519:"), KEY):
            assert secret not in body


async def test_without_a_token_on_loopback_the_page_is_open(watched: Watched) -> None:
    await watched.snapshot(LONG)
    async with (HealthServer("127.0.0.1", 0, watched.daemon.readiness,
                             view=View(watched.state)) as server,
                httpx.AsyncClient(base_url=server.url) as http):
        assert (await http.get("/view/state")).status_code == 200
        root = await http.get("/")
        assert root.status_code == 302 and root.headers["Location"] == "/view"


def test_beyond_loopback_a_token_is_required(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert view_problem(HealthSettings(host=host)) is None, host
    for host in ("0.0.0.0", "192.168.1.10", "::", "guard.example.internal"):
        problem = view_problem(HealthSettings(host=host))
        assert problem is not None and problem.startswith("health.token: the live page"), host
        assert view_problem(HealthSettings(host=host, view=False)) is None
        assert view_problem(HealthSettings(host=host, token=SecretStr(TOKEN))) is None
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    settings = HealthSettings(host="0.0.0.0", token_file=token_file)
    assert view_problem(settings) is None
    assert settings.view_token() == SecretStr(TOKEN)
    missing = view_problem(HealthSettings(host="0.0.0.0", token_file=tmp_path / "none"))
    assert missing is not None and missing.startswith("health.token_file: cannot read")
    short = view_problem(HealthSettings(token=SecretStr("short")))
    assert short == "health.token: the token must be at least 16 characters"
    with pytest.raises(ValueError, match="give token or token_file, not both"):
        HealthSettings(token=SecretStr(TOKEN), token_file=token_file)
    assert ConfigError  # the type check_settings raises with these lines
