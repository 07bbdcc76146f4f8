"""A minimal signed Orderly REST client for the simulator's own tests, demos and benchmarks.

It is deliberately not the bot's client (``guardbot.exchange``): the simulator is checked
against the official SDK and against this, the bot's client against the simulator.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from guardbot.sim.admin import SimAccount
from guardbot.sim.keys import signed_headers


class SimClient:
    """Signs each request the documented way (compact JSON bodies, base64url signatures)."""

    def __init__(self, rest_url: str, account: SimAccount, client: httpx.AsyncClient) -> None:
        self.rest_url = rest_url
        self.account = account
        self.client = client

    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timestamp_ms: int | None = None,
    ) -> httpx.Response:
        """Send one signed request; ``path`` includes any query string, exactly as signed."""
        text = json.dumps(body, separators=(",", ":")) if body is not None else ""
        headers = signed_headers(
            self.account.orderly_secret,
            self.account.orderly_key,
            self.account.account_id,
            timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
            method,
            path,
            text,
        )
        headers["Content-Type"] = (
            "application/json" if body is not None else "application/x-www-form-urlencoded"
        )
        return await self.client.request(
            method, self.rest_url + path, content=text.encode() or None, headers=headers
        )

    async def data(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The ``data`` of a successful call (``None`` for data-less successes); raises
        ``AssertionError`` with the envelope otherwise."""
        response = await self.request(method, path, body)
        envelope = response.json()
        if response.status_code != 200 or envelope.get("success") is not True:
            raise AssertionError(f"{method} {path}: {response.status_code} {envelope}")
        return envelope.get("data")
