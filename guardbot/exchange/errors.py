"""Exchange errors, named after what the caller must do (docs/architecture.md, "Conventions").

``httpx`` and ``websockets`` exceptions and Orderly error envelopes are mapped into this tree
in exactly one place (``guardbot.exchange.rest``); nothing above the adapter catches a foreign
exception.

    ExchangeError
    ├── RetryLater          transient: 5xx, -1011 maintenance, network error *before* sending
    │   ├── RateLimited     HTTP 429 / -1003; ``retry_after_s`` says when
    │   └── Unreachable     no connection at all (refused, DNS, connect timeout)
    ├── Rejected            the exchange refused (documented code + message); never retried
    ├── AuthError           bad key, signature, scope or clock: stop and tell the operator
    ├── Uncertain           the request may have been applied (timeout / connection lost
    │                       after a POST was sent): re-read state before any retry
    └── MalformedResponse   the exchange answered something we cannot parse
"""

from __future__ import annotations


class ExchangeError(Exception):
    """Base of every error raised by the exchange adapter. Never carries secrets."""


class RetryLater(ExchangeError):
    """Transient failure; the request was not applied. Retry after backoff."""


class RateLimited(RetryLater):
    """HTTP 429 / code -1003 (docs/exchange.md §5)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unreachable(RetryLater):
    """Nothing was sent: the exchange could not be connected to. Transient while running;
    at start-up more likely a wrong URL or a network problem the operator must see."""


class Rejected(ExchangeError):
    """The exchange refused the request with a documented error code (docs/exchange.md §3)."""

    def __init__(self, code: int, message: str, http_status: int | None = None) -> None:
        super().__init__(f"exchange rejected the request: code {code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status


class AuthError(ExchangeError):
    """Key, signature, scope or timestamp problem (-1001/-1002): stop and tell the operator."""

    def __init__(self, code: int | None, message: str) -> None:
        # No code: refused without an Orderly error code (HTTP 401, a WebSocket login) or a
        # secret unusable before anything was sent.
        super().__init__(f"authentication failed: code {code}: {message}" if code is not None
                         else f"authentication failed: {message}")
        self.code = code
        self.message = message


class Uncertain(ExchangeError):
    """A write may or may not have been applied. The caller must reconcile by re-reading the
    position before anything else; a blind retry risks a double top-up
    (docs/architecture.md, "Settlement")."""


class MalformedResponse(ExchangeError):
    """A response or push did not match the documented wire format."""
