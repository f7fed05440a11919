"""Prometheus metrics, served by the HTTP listener at /metrics."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
