"""The API process's Prometheus metrics (served at /api/metrics), one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# seconds: a kept answer takes about a millisecond, a computed page tens
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "healthscore_api_requests_total",
            "Requests answered, by route (the template of the route serving the path; "
            "`other` for a path no route serves, static files among them) and status "
            "(health, readiness and metrics not counted).",
            ["route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "healthscore_api_request_duration_seconds",
            "From a request's arrival to its response sent, by route.",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.cache_requests = Counter(
            "healthscore_api_cache_requests_total",
            "GET requests to cached endpoints by outcome: hit (a kept answer), lagging (a "
            "kept list answer computed before a change of the read model, less than "
            "API_LIST_STALENESS_SECONDS ago), shared (the answer of a concurrent miss of the "
            "same key), miss (computed in the database), bypass (not cached: the "
            "invalidation listener is not live, or the token has expired).",
            ["outcome"],
            registry=r,
        )
        self.cache_misses = Counter(
            "healthscore_api_cache_misses_total",
            "Misses computed in the database, by why no kept answer was served: absent (none "
            "kept for the key: its first request in this process, or evicted), changed (a "
            "table or organization it read has changed since), expired (a clock-bound answer "
            "past its time).",
            ["reason"],
            registry=r,
        )
        self.cache_unkept = Counter(
            "healthscore_api_cache_unkept_total",
            "Answers computed but not kept, by why: moved (a version the answer read moved "
            "while it was computed), not_serving (the listener was not live when it was "
            "done), clock (a clock-bound answer already at its time).",
            ["reason"],
            registry=r,
        )
        self.cache_refreshes = Counter(
            "healthscore_api_cache_refreshes_total",
            "Lagging list answers computed again in the background while they were served.",
            registry=r,
        )
        self.cache_evictions = Counter(
            "healthscore_api_cache_evictions_total",
            "Answers pushed out of the response cache by its bounds (entries or bytes): "
            "a steady rate says the cache is smaller than what its clients ask.",
            registry=r,
        )
        self.cache_not_modified = Counter(
            "healthscore_api_cache_not_modified_total",
            "Answers sent as 304 Not Modified (If-None-Match matched the answer's ETag).",
            registry=r,
        )
        self.cache_invalidations = Counter(
            "healthscore_api_cache_invalidations_total",
            "Change announcements heard from the database, by table.",
            ["table"],
            registry=r,
        )
        self.cache_audience_lookups = Counter(
            "healthscore_api_cache_audience_lookups_total",
            "Times a user's audience (whose answers they share, app_audience) was asked of "
            "the database: once per user, and again after user_profiles changes.",
            registry=r,
        )
        self.cache_entries = Gauge(
            "healthscore_api_cache_entries", "Answers kept in the response cache.", registry=r
        )
        self.cache_bytes = Gauge(
            "healthscore_api_cache_bytes",
            "Approximate size of the answers kept in the response cache.",
            registry=r,
        )
        self.cache_listener_up = Gauge(
            "healthscore_api_cache_listener_up",
            "1 while the invalidation listener is connected and the cache serves, else 0.",
            registry=r,
        )
        self.cache_listener_losses = Counter(
            "healthscore_api_cache_listener_losses_total",
            "Times the invalidation listener's connection was lost (the cache was cleared "
            "and bypassed until it was back).",
            registry=r,
        )
