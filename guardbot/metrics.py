"""Prometheus metrics (served on ``/metrics`` by the health server).

One module so every metric name is defined once; the rest of the code imports the objects.
Label values are small closed sets (account names as the config gives them, through
``account_label``; symbols, policy names, kinds, outcomes, exchange error codes); never a
secret.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from guardbot.logs import account_name


def account_label(account_id: str) -> str:
    """The ``account`` label of an account: its config name (``guardbot.logs``)."""
    return account_name(account_id)


SNAPSHOTS = Counter(
    "guardbot_snapshots_total", "Position snapshots received", ["account", "source"]
)
MALFORMED = Counter(
    "guardbot_malformed_messages_total", "Exchange messages that failed to parse", ["source"]
)
DATA_AGE = Gauge(
    "guardbot_data_age_seconds", "Age of the oldest position snapshot per account", ["account"]
)
POLICY_EVALUATIONS = Counter(
    "guardbot_policy_evaluations_total", "Policy evaluations", ["policy", "outcome"]
)
ACTIONS = Counter(
    "guardbot_actions_total", "Margin actions by outcome", ["account", "policy", "kind", "outcome"]
)
MARGIN_MOVED = Counter(
    "guardbot_margin_usdc_total", "Margin added or reduced (USDC)", ["account", "kind"]
)
EVALUATION_FAILURES = Counter(
    "guardbot_evaluation_failures_total",
    "Positions skipped in an evaluation round because evaluating them failed",
    ["account"],
)
BUDGET_LEFT = Gauge(
    "guardbot_budget_left_usdc", "Top-up budget left today (USDC)", ["account"]
)
EXCHANGE_LATENCY = Histogram(
    "guardbot_exchange_latency_seconds",
    "Exchange REST call latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EXCHANGE_ERRORS = Counter(
    "guardbot_exchange_errors_total", "Exchange errors by code", ["endpoint", "code"]
)
RATE_LIMITED = Counter("guardbot_rate_limited_total", "HTTP 429 responses", ["endpoint"])
WS_RECONNECTS = Counter("guardbot_ws_reconnects_total", "WebSocket reconnects", ["stream"])
SPOOL_DEPTH = Gauge("guardbot_audit_spool_depth", "Audit records waiting for the database")
ALERTS = Counter(
    "guardbot_alerts_total",
    "Webhook alerts by outcome (sent, failed, suppressed into a digest, dropped on overflow)",
    ["webhook", "kind", "outcome"],
)
READY = Gauge(
    "guardbot_ready", "1 when /readyz answers 200, else 0 (re-evaluated on every scrape)"
)
