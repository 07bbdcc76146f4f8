"""Sources of position data: the REST poller and the WebSocket streams
(docs/architecture.md, "Data flow").

Both report what the exchange says of an account's key through a ``KeyReport``: an
``AuthError`` when it refuses the key (unregistered, revoked, expired, without a scope), and
``None`` once the same source is served again after such a refusal. A refused key is retried
with back-off (``auth_retry_delay``): it stays refused until the operator registers it, and
then the account is guarded again without a restart.
"""

from __future__ import annotations

from collections.abc import Callable

from guardbot.backoff import delay
from guardbot.exchange.errors import AuthError

# (account id, source: "rest", "private" or "public", the refusal or None once served again)
KeyReport = Callable[[str, str, AuthError | None], None]

# Retries of a refused key: from 1 s, doubling, up to a minute.
AUTH_RETRY_BASE_S = 1.0
AUTH_RETRY_CAP_S = 60.0


def auth_retry_delay(refusals: int) -> float:
    """Seconds to wait before trying a key again after ``refusals`` refusals in a row."""
    return delay(refusals - 1, AUTH_RETRY_BASE_S, AUTH_RETRY_CAP_S) if refusals else 0.0
