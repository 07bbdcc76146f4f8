"""Signed REST calls over one pooled ``httpx.AsyncClient``: the ONE place where ``httpx``
exceptions and Orderly error envelopes become ``guardbot.exchange.errors``
(docs/architecture.md, "Conventions").

Mapping (docs/exchange.md §3, §5):

    connect error / connect or pool timeout   -> Unreachable  (a RetryLater; nothing was sent)
    timeout / connection lost after sending   -> GET: RetryLater, POST: Uncertain
    HTTP 429 or code -1003                    -> RateLimited  (retry_after_s from Retry-After)
    code -1001 / -1002, HTTP 401 / 403        -> AuthError
    code -1011 (maintenance)                  -> RetryLater
    HTTP 5xx                                  -> GET: RetryLater, POST: Uncertain
    any other error envelope                  -> Rejected(code, message)
    unreadable body                           -> MalformedResponse (POST 2xx/5xx: Uncertain)

A POST is sent once and never retried here: ``POST /v1/position_margin`` has no client id, so
after an unknown outcome only a re-read of the position can tell whether it was applied
(docs/architecture.md, "Invariants": every USDC moved is known). A 5xx answer to a POST
counts as unknown too: gateways answer 502/504 after the backend may already have
committed. GETs are retried with jittered backoff on ``RetryLater`` (including 429, waiting
at least ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx

from guardbot import metrics
from guardbot.backoff import backoff, retry_delay
from guardbot.exchange import wire
from guardbot.exchange.errors import (
    AuthError,
    ExchangeError,
    MalformedResponse,
    RateLimited,
    Rejected,
    RetryLater,
    Uncertain,
    Unreachable,
)
from guardbot.exchange.limits import SHARED_LIMITER, Priority, RateLimiter
from guardbot.exchange.signing import Signer

log = logging.getLogger(__name__)

AUTH_CODES = frozenset({-1001, -1002})
RATE_LIMIT_CODE = -1003
MAINTENANCE_CODE = -1011

Sleep = Callable[[float], Awaitable[None]]


def path_with_query(path: str, params: Mapping[str, str] | None) -> str:
    """The exact ``path?query`` that is both sent and signed (docs/exchange.md §2)."""
    return f"{path}?{urlencode(params, quote_via=quote)}" if params else path


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


class RestClient:
    """Signed Orderly REST calls for one account, returning decoded envelopes."""

    def __init__(
        self,
        base_url: str,
        account_id: str,
        signer: Signer,
        *,
        timeout_s: float = 10.0,
        clock_ms: Callable[[], int],
        limiter: RateLimiter = SHARED_LIMITER,
        max_attempts: int = 3,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url
        self._account_id = account_id
        self._signer = signer
        self._clock_ms = clock_ms
        self._limiter = limiter
        self._max_attempts = max_attempts
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_s)
        )

    def __repr__(self) -> str:
        return f"RestClient({self.base_url!r}, account_id={self._account_id!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str] | None = None,
        *,
        priority: Priority = Priority.ROUTINE,
        signed: bool = True,
    ) -> wire.Envelope:
        """GET with retries on ``RetryLater``; ``endpoint`` is the ``LIMITS`` key."""
        target = path_with_query(path, params)
        delays = backoff(*self._backoff, self._rng)
        attempt = 1
        while True:
            try:
                return await self._send("GET", endpoint, target, "", priority, signed)
            except RetryLater as exc:
                if attempt >= self._max_attempts:
                    raise
                retry_after = exc.retry_after_s if isinstance(exc, RateLimited) else None
                delay = retry_delay(next(delays), retry_after)
                log.debug("GET %s failed (%s); retry %d in %.2f s", target, exc, attempt, delay)
                attempt += 1
                await self._sleep(delay)

    async def post(
        self, endpoint: str, path: str, body: Mapping[str, str], *, priority: Priority,
        timeout_s: float | None = None,
    ) -> wire.Envelope:
        """POST once (``timeout_s``: instead of the client's timeout). Raises
        ``Uncertain`` whenever the request may have been applied."""
        text = json.dumps(body, separators=(",", ":"))
        return await self._send("POST", endpoint, path, text, priority, signed=True,
                                timeout_s=timeout_s)

    async def _send(
        self, method: str, endpoint: str, target: str, body: str, priority: Priority,
        signed: bool, timeout_s: float | None = None,
    ) -> wire.Envelope:
        await self._limiter.acquire(endpoint, self._signer.orderly_key, priority, self.base_url)
        headers = (
            self._signer.rest_headers(self._account_id, self._clock_ms(), method, target, body)
            if signed else {}
        )
        what = f"{method} {target}{' ' + body if body else ''}"
        start = time.perf_counter()
        try:
            response = await self._http.request(
                method, target, content=body.encode() if body else None, headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise self._failed(endpoint, "network", Unreachable(
                f"{what}: cannot reach the exchange at {self.base_url} ({type(exc).__name__});"
                " nothing was sent"
            ), what) from None
        except httpx.HTTPError as exc:  # after sending: timeouts, lost connections, bad bodies
            if method == "POST":
                raise self._failed(endpoint, "uncertain", Uncertain(
                    f"{what}: no answer ({type(exc).__name__}) after the request was sent; it"
                    " may have been applied: re-read the position before any retry"
                ), what) from None
            raise self._failed(endpoint, "network", RetryLater(
                f"{what}: no answer ({type(exc).__name__})"
            ), what) from None
        finally:
            elapsed = time.perf_counter() - start
            metrics.EXCHANGE_LATENCY.labels(endpoint).observe(elapsed)
        outcome = interpret(method, what, response.status_code, response.content,
                            _retry_after(response))
        if isinstance(outcome, Failure):
            if isinstance(outcome.error, AuthError):
                outcome = _with_clock_hint(outcome, response, self._clock_ms())
            if isinstance(outcome.error, RateLimited):
                metrics.RATE_LIMITED.labels(endpoint).inc()
            if isinstance(outcome.error, MalformedResponse):
                metrics.MALFORMED.labels("rest").inc()
            raise self._failed(endpoint, outcome.label, outcome.error, what)
        if method == "POST":
            log.info("%s -> ok in %.1f ms", what, elapsed * 1000)
        else:
            log.debug("%s -> ok in %.1f ms", what, elapsed * 1000)
        return outcome

    @staticmethod
    def _failed(endpoint: str, label: str, error: ExchangeError, what: str) -> ExchangeError:
        metrics.EXCHANGE_ERRORS.labels(endpoint, label).inc()
        text = str(error)
        log.warning("%s", text if text.startswith(what) else f"{what}: {text}")
        return error


# The exchange refuses timestamps more than 300 s from its clock (docs/exchange.md §2); a
# refusal with our clock this far off its ``Date`` header is most likely that.
CLOCK_SKEW_HINT_S = 60.0


def clock_skew_s(date_header: str | None, now_ms: int) -> float | None:
    """How far our clock is ahead of the server's (seconds), from its HTTP ``Date``
    header (1 s resolution); ``None`` without a readable header."""
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return None
    return now_ms / 1000 - server.timestamp()


def _with_clock_hint(failure: Failure, response: httpx.Response, now_ms: int) -> Failure:
    skew = clock_skew_s(response.headers.get("date"), now_ms)
    error = failure.error
    if skew is None or abs(skew) < CLOCK_SKEW_HINT_S or not isinstance(error, AuthError):
        return failure
    return Failure(failure.label, AuthError(error.code, (
        f"{error.message}; this host's clock is {skew:+.0f} s off the exchange's (it allows"
        " 300 s): fix the clock (NTP)")))


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failed response: the metrics label and the error to raise."""

    label: str
    error: ExchangeError


def interpret(
    method: str, what: str, status: int, content: bytes, retry_after_s: float | None
) -> wire.Envelope | Failure:
    """Classify one HTTP answer (pure; the table in the module docstring)."""
    applied_maybe = "it may have been applied: re-read the position before any retry"
    if status == 429:
        return Failure(str(RATE_LIMIT_CODE), RateLimited(
            f"{what}: rate limited (HTTP 429)", retry_after_s or 1.0
        ))
    try:
        envelope = wire.envelope(wire.loads(content))
    except MalformedResponse as exc:
        label = f"http_{status}"
        if method == "POST" and (status < 300 or status >= 500):
            return Failure("uncertain", Uncertain(
                f"{what}: unreadable HTTP {status} answer ({exc}); {applied_maybe}"
            ))
        if status in (401, 403):
            return Failure(label, AuthError(None, f"HTTP {status}"))
        if status >= 500:
            return Failure(label, RetryLater(f"{what}: HTTP {status} from the exchange"))
        return Failure("malformed", MalformedResponse(f"{what}: HTTP {status}: {exc}"))
    if envelope.success and status < 300:
        return envelope
    code, message = envelope.code, envelope.message or f"HTTP {status}"
    label = str(code) if code is not None else f"http_{status}"
    if code == RATE_LIMIT_CODE:
        return Failure(label, RateLimited(f"{what}: rate limited: {message}",
                                          retry_after_s or 1.0))
    if code in AUTH_CODES or status in (401, 403):
        return Failure(label, AuthError(code, message))
    if code == MAINTENANCE_CODE:
        return Failure(label, RetryLater(f"{what}: exchange maintenance: {message}"))
    if status >= 500:
        if method == "POST":
            return Failure(label, Uncertain(
                f"{what}: HTTP {status} ({code} {message}); {applied_maybe}"
            ))
        return Failure(label, RetryLater(f"{what}: HTTP {status}: {code} {message}"))
    return Failure(label, Rejected(code if code is not None else 0, message, status))
