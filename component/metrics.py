"""Prometheus metrics, served by the HTTP listener at /metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from stamina.instrumentation import StructlogOnRetryHook, set_on_retry_hooks

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails

REGISTRY = CollectorRegistry(auto_describe=True)

SYNCS = Counter("roster_syncs", "Roster syncs by outcome.", ["result"], registry=REGISTRY)
ITEMS_WRITTEN = Counter(
    "roster_items_written", "Roster items added or changed in the server.", registry=REGISTRY
)
ITEMS_REMOVED = Counter(
    "roster_items_removed", "Roster items removed from the server.", registry=REGISTRY
)
FETCH_SECONDS = Histogram(
    "webapp_fetch_seconds", "Time to fetch one roster from the web app.", registry=REGISTRY
)
DELEGATED = Counter(
    "delegated_roster_requests",
    "Users' roster requests answered, by outcome.",
    ["result"],
    registry=REGISTRY,
)
READY = Gauge(
    "xmpp_ready",
    "1 when the XMPP link is up and the needed privileges are granted.",
    registry=REGISTRY,
)
SERVER_REQUESTS = Counter(
    "component_server_requests",
    "Requests the component made to the XMPP server: IQs on the stream, or admin API calls.",
    ["kind"],
    registry=REGISTRY,
)
REFRESH_REQUESTS = Counter(
    "refresh_requests",
    "Requests to the refresh endpoints (/roster_admin/...), by HTTP status of the answer.",
    ["status"],
    registry=REGISTRY,
)
FETCH_ERRORS = Counter(
    "webapp_fetch_errors",
    "Failed attempts to fetch a roster from the web app, by kind.",
    ["kind"],
    registry=REGISTRY,
)
XMPP_CONNECTED = Gauge(
    "xmpp_connected", "1 while the component's stream to the XMPP server is up.", registry=REGISTRY
)
XMPP_RECONNECTS = Counter(
    "xmpp_reconnects",
    "Streams to the XMPP server established again after the previous one was lost.",
    registry=REGISTRY,
)
# stamina's own Prometheus hook counts into the default registry, which /metrics does not
# serve: the same counter (name and labels) lives here instead, fed by our hook.
RETRIES = Counter(
    "stamina_retries",
    "Total number of retries.",
    ["callable", "retry_num", "error_type"],
    registry=REGISTRY,
)


def count_retry(details: RetryDetails) -> None:
    """stamina hook: one retry scheduled, counted like stamina's own Prometheus hook."""
    caused_by = type(details.caused_by)
    error_type = caused_by.__qualname__
    if caused_by.__module__ != "builtins":
        error_type = f"{caused_by.__module__}.{error_type}"
    RETRIES.labels(
        callable=details.name, retry_num=str(details.retry_num), error_type=error_type
    ).inc()


def instrument_retries() -> None:
    """Count stamina's retries here and log them through structlog (its default logging)."""
    set_on_retry_hooks([count_retry, StructlogOnRetryHook])


CIRCUIT_OPEN = Gauge(
    "webapp_circuit_open",
    "1 while the web app is taken to be down and fetches fail at once (circuit open).",
    registry=REGISTRY,
)
CIRCUIT_OPENED = Counter(
    "webapp_circuit_opened",
    "Times the web app was found down (the circuit opened after failures in a row).",
    registry=REGISTRY,
)
