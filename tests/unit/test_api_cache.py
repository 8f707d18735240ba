"""The response cache's bookkeeping: versions, bounds, freshness, the endpoint map."""

from __future__ import annotations

import math
import re
import uuid
from datetime import timedelta

from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope, Send

from healthscore.api import routes
from healthscore.api.auth import TokenVerifier, issue_hs256
from healthscore.api.cache import (
    KEY_RETIREMENT_MARGIN,
    Answer,
    CachedReads,
    CacheState,
    ReadModelVersions,
    ResponseCache,
    _matches,
    endpoint_of,
)
from healthscore.api.metrics import ApiMetrics
from healthscore.store import read_model_changes as t

USER = uuid.uuid4()


def answer(body: bytes = b"{}") -> Answer:
    return Answer([(b"content-type", b"application/json")], body, b'"e"')


def test_an_answer_is_served_only_at_its_versions_and_while_fresh() -> None:
    cache = ResponseCache()
    key = (USER, b"/api/v1/organizations?")
    cache.put(key, (1, 2), fresh_until=10.0, answer=answer())
    assert cache.get(key, (1, 2), now=5.0) == answer()
    assert cache.get((uuid.uuid4(), key[1]), (1, 2), now=5.0) is None  # another user
    assert cache.get(key, (1, 3), now=5.0) is None
    assert len(cache) == 0 and cache.bytes == 0  # a stale entry is dropped
    cache.put(key, (1, 2), fresh_until=10.0, answer=answer())
    assert cache.get(key, (1, 2), now=10.0) is None


def test_the_least_recently_used_leave_first_by_count_and_by_bytes() -> None:
    cache = ResponseCache(max_entries=3, max_bytes=8000)
    keys = [(USER, f"/p{i}".encode()) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, (0,), math.inf, answer())
    assert cache.get(keys[0], (0,), 0.0) is not None  # now the most recent
    cache.put(keys[3], (0,), math.inf, answer())
    assert [k for k in keys if cache.get(k, (0,), 0.0) is not None] == [
        keys[0],
        keys[2],
        keys[3],
    ]
    big = answer(b"x" * 900)
    for key in keys:
        cache.put(key, (1,), math.inf, big)
    assert cache.bytes <= 8000 and len(cache) == 3
    cache.put(keys[0], (1,), math.inf, answer(b"x" * 1001))  # over an eighth: not kept
    assert cache.get(keys[0], (1,), 0.0) is None
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_versions_move_per_table_and_an_unknown_payload_moves_all() -> None:
    versions = ReadModelVersions()
    lists = (t.CUSTOMER_HEALTH, t.ORGANIZATIONS, t.USERS)
    before = versions.of(lists)
    versions.changed(t.INTERACTIONS)
    assert versions.of(lists) == before
    versions.changed(t.CUSTOMER_HEALTH)
    assert versions.of(lists) != before
    everything = versions.of(t.TABLES)
    versions.changed("a_table_added_later")
    assert all(a < b for a, b in zip(everything, versions.of(t.TABLES), strict=True))


def test_the_cache_serves_only_while_live_and_the_key_is_in_use() -> None:
    state = CacheState(ResponseCache(), ApiMetrics())
    assert not state.serving(wall=1000.0, monotonic=1.0)  # never heard the database
    state.live(until=5.0)
    assert state.serving(1000.0, 4.9) and not state.serving(1000.0, 5.0)
    state.key_retires_at = 2000.0
    assert state.serving(2000.0 - KEY_RETIREMENT_MARGIN - 1, 4.9)
    assert not state.serving(2000.0 - KEY_RETIREMENT_MARGIN, 4.9)
    state.key_retires_at = math.inf
    state.cache.put((USER, b"/"), (0,), math.inf, answer())
    before = state.versions.of(t.TABLES)
    state.blind()
    assert not state.serving(1000.0, 1.0) and len(state.cache) == 0
    assert state.versions.of(t.TABLES) != before


def test_if_none_match() -> None:
    assert _matches(b'"a", "e"', b'"e"') and _matches(b"*", b'"e"')
    assert _matches(b'W/"e"', b'"e"')
    assert not _matches(b'"a"', b'"e"') and not _matches(None, b'"e"')


def test_every_get_route_has_its_endpoint_and_reads_the_identity_tables() -> None:
    for route in routes.router.routes:
        assert isinstance(route, APIRoute)
        if "GET" not in route.methods:
            continue
        path = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), route.path)
        endpoint = endpoint_of(path)
        assert endpoint is not None, route.path
        assert {t.USERS, t.SIGNING_KEYS} <= set(endpoint.tables), route.path
        assert set(endpoint.tables) <= set(t.TABLES)
    assert endpoint_of("/api/v1/organizations/x/milestones/y/acknowledge") is None
    assert endpoint_of("/api/readyz") is None and endpoint_of("/") is None
    organization = endpoint_of(f"/api/v1/organizations/{uuid.uuid4()}")
    assert organization is not None and organization.clock_bound
    assert t.INTERACTIONS in organization.tables and t.ALERTS in organization.tables


class CountingApp:
    """An ASGI app standing in for the routes: answers 200 with a counter."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = f'{{"call": {self.calls}}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def call(app: CachedReads, method: str, path: str, token: str) -> tuple[int, bytes]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_writes_move_every_version_and_other_methods_none() -> None:
    secret = "a-test-secret-of-at-least-32-bytes-long"
    state = CacheState(ResponseCache(), ApiMetrics())
    state.live(until=math.inf)
    routes_app = CountingApp()
    app = CachedReads(routes_app, state, TokenVerifier(hs256_secret=secret.encode()))
    token = issue_hs256(secret, USER, timedelta(minutes=5))
    path = "/api/v1/organizations"
    assert await call(app, "GET", path, token) == (200, b'{"call": 1}')
    assert await call(app, "GET", path, token) == (200, b'{"call": 1}')  # kept
    await call(app, "OPTIONS", path, token)
    assert await call(app, "GET", path, token) == (200, b'{"call": 1}')
    await call(app, "POST", f"{path}/x/milestones/y/acknowledge", token)
    assert await call(app, "GET", path, token) == (200, b'{"call": 4}')
    # an unverifiable token goes to the routes (which answer 401), and is never kept
    assert await call(app, "GET", path, "forged") == (200, b'{"call": 5}')
    assert await call(app, "GET", path, token) == (200, b'{"call": 4}')
    state.blind()
    assert await call(app, "GET", path, token) == (200, b'{"call": 6}')
    assert await call(app, "GET", path, token) == (200, b'{"call": 7}')
