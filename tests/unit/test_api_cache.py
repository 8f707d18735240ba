"""The response cache's bookkeeping: versions, bounds, freshness, the endpoint map."""

from __future__ import annotations

import asyncio
import math
import re
import uuid
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope, Send

from healthscore.api import routes
from healthscore.api.auth import TokenVerifier, issue_hs256
from healthscore.api.cache import (
    CLOCK_MAX_AGE,
    KEY_RETIREMENT_MARGIN,
    Answer,
    CachedReads,
    CacheState,
    Key,
    Lagging,
    ReadModelVersions,
    ResponseCache,
    _matches,
    changes_by_clock_in,
    endpoint_and_organization,
    endpoint_of,
    id_prefix,
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
    # an audience's answers: no user's share applies
    keys: list[Key] = [("audience:admin", f"/p{i}".encode()) for i in range(4)]
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


def test_a_users_own_answers_hold_their_share_and_replace_their_oldest() -> None:
    cache = ResponseCache(max_entries=16, max_bytes=64_000)  # a user's share: 2, 8,000 bytes
    other = (uuid.uuid4(), b"/other")
    cache.put(other, (0,), math.inf, answer())
    mine: list[Key] = [(USER, f"/p{i}".encode()) for i in range(20)]
    for key in mine:
        cache.put(key, (0,), math.inf, answer())
    assert [k for k in mine if cache.get(k, (0,), 0.0) is not None] == mine[-2:]
    assert cache.get(other, (0,), 0.0) is not None  # never pushed out by them
    # by bytes too: three answers of 3,000 bytes do not fit in 8,000
    big: list[Key] = [(USER, f"/big{i}".encode()) for i in range(3)]
    for key in big:
        cache.put(key, (0,), math.inf, answer(b"x" * 2800))
    assert [k for k in big if cache.get(k, (0,), 0.0) is not None] == big[-2:]
    assert len(cache) == 3 and cache.get(other, (0,), 0.0) is not None
    # an audience's answers are not a user's
    shared: list[Key] = [("audience:admin", f"/s{i}".encode()) for i in range(10)]
    for key in shared:
        cache.put(key, (0,), math.inf, answer())
    assert all(cache.get(k, (0,), 0.0) is not None for k in shared)
    cache.clear()
    cache.put(mine[0], (0,), math.inf, answer())
    assert len(cache) == 1 and cache.get(mine[0], (0,), 0.0) is not None


def test_a_coalition_of_users_cannot_push_out_an_audiences_or_a_small_users_answers() -> None:
    """Each user holds an eighth at most, so eight users asking distinct queries
    emptied the cache for everybody. The users' answers hold half of it together (32
    answers here), and the largest holder gives one up first: a user keeping one
    answer loses it only to as many users as fill that half, one answer each."""
    cache = ResponseCache(max_entries=64, max_bytes=1_000_000)
    shared: list[Key] = [("audience:admin", f"/s{i}".encode()) for i in range(8)]
    modest: list[Key] = [(uuid.uuid4(), f"/m{i}".encode()) for i in range(2)]
    for key in shared + modest:
        cache.put(key, (0,), math.inf, answer())
    for member in [uuid.uuid4() for _ in range(16)]:
        for n in range(20):
            cache.put((member, f"/junk{n}".encode()), (0,), math.inf, answer())
    assert all(cache.get(k, (0,), 0.0) is not None for k in shared + modest)
    assert len(cache) <= 64
    # audiences are bound by the cache alone: they take back what users leave
    more: list[Key] = [("audience:admin", f"/t{i}".encode()) for i in range(40)]
    for key in more:
        cache.put(key, (0,), math.inf, answer())
    assert len(cache) == 64 and cache.get(more[-1], (0,), 0.0) is not None
    # and by bytes as by entries
    cache = ResponseCache(max_entries=1000, max_bytes=64_000)
    cache.put(shared[0], (0,), math.inf, answer(b"x" * 7000))
    for member in [uuid.uuid4() for _ in range(20)]:
        for n in range(4):
            cache.put((member, f"/junk{n}".encode()), (0,), math.inf, answer(b"x" * 3000))
    assert cache.get(shared[0], (0,), 0.0) is not None and cache.bytes <= 64_000


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


def test_an_organizations_version_moves_with_it_and_with_its_whole_table() -> None:
    versions = ReadModelVersions()
    page = (t.CUSTOMER_HEALTH, t.INTERACTIONS, t.ORGANIZATIONS, t.USERS)
    a, b_ = str(uuid.uuid4()), str(uuid.uuid4())
    lists = versions.of(page)
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed(t.CUSTOMER_HEALTH, [a])
    assert versions.of_organization(page, a) != before[a]
    assert versions.of_organization(page, b_) == before[b_]  # (unless they share a bucket)
    assert versions.of(page) != lists  # a list reads every organization
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed(t.INTERACTIONS)  # the whole table (too many, or a TRUNCATE)
    assert all(versions.of_organization(page, org) != before[org] for org in (a, b_))
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed(t.ORGANIZATIONS, [a])  # a new organization (0063): that one only
    assert versions.of_organization(page, a) != before[a]
    assert versions.of_organization(page, b_) == before[b_]
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed(t.ORGANIZATIONS)  # a rename: all of it
    assert all(versions.of_organization(page, org) != before[org] for org in (a, b_))
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed(t.USERS, [a])  # not announced by organization: all of it
    assert all(versions.of_organization(page, org) != before[org] for org in (a, b_))
    before = {org: versions.of_organization(page, org) for org in (a, b_)}
    versions.changed_everything()
    assert all(versions.of_organization(page, org) != before[org] for org in (a, b_))


def test_payloads_name_a_table_and_perhaps_organizations() -> None:
    a, b_ = str(uuid.uuid4()), str(uuid.uuid4())
    assert t.organizations_changed(t.CUSTOMER_HEALTH) == (t.CUSTOMER_HEALTH, [])
    assert t.organizations_changed(f"{t.ALERTS}:{a},{b_}") == (t.ALERTS, [a, b_])


def test_an_organizations_path_names_it_as_postgresql_prints_it() -> None:
    org = uuid.uuid4()
    for spelled in (str(org), str(org).upper(), org.hex):
        for suffix in ("", "/history", "/milestones"):
            endpoint, named = endpoint_and_organization(f"/api/v1/organizations/{spelled}{suffix}")
            assert endpoint is not None and endpoint.by_organization and named == str(org)
    endpoint, named = endpoint_and_organization("/api/v1/organizations/not-an-id")
    assert endpoint is not None and named is None
    endpoint, named = endpoint_and_organization("/api/v1/organizations")
    assert endpoint is not None and not endpoint.by_organization and named is None


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


# GET routes the response cache does not keep: /freshness changes with the clock and
# reads the service's queue, which announces no change (one cheap statement)
UNCACHED_GETS = {"/api/v1/freshness"}


def test_every_get_route_has_its_endpoint_and_reads_the_identity_tables() -> None:
    for route in routes.router.routes:
        assert isinstance(route, APIRoute)
        assert route.methods is not None
        if "GET" not in route.methods:
            continue
        if route.path in UNCACHED_GETS:
            assert endpoint_of(route.path) is None
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


class ClockBoundApp(CountingApp):
    """A clock-bound route that says how long its answer stays what it is."""

    def __init__(self, seconds: float | None) -> None:
        super().__init__()
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.seconds is not None:
            changes_by_clock_in(scope, self.seconds)
        await super().__call__(scope, receive, send)


class TickingClock:
    """A fake monotonic clock a second on at each reading, from `start`."""

    def __init__(self, start: float) -> None:
        self.next = start

    def __call__(self) -> float:
        self.next += 1.0
        return self.next - 1.0


async def test_a_clock_bound_answer_is_kept_as_long_as_its_route_says() -> None:
    secret = "a-test-secret-of-at-least-32-bytes-long"
    token = issue_hs256(secret, USER, timedelta(minutes=5))
    page = f"/api/v1/organizations/{uuid.uuid4()}"
    kept: dict[float | None, float | None] = {}
    for seconds in (None, 0.0, math.inf, 30.0):
        state = CacheState(ResponseCache(), ApiMetrics())
        state.live(until=math.inf)
        app = CachedReads(
            ClockBoundApp(seconds),
            state,
            TokenVerifier(hs256_secret=secret.encode()),
            clock=TickingClock(1000.0),
        )
        await call(app, "GET", page, token)
        entries = list(state.cache._entries.values())
        kept[seconds] = None if not entries else entries[0].fresh_until
    assert kept[0.0] is None  # due already: not kept
    # counted from the clock's first reading, before the route ran (1000): not later
    assert kept[None] == 1000.0 + CLOCK_MAX_AGE
    assert kept[30.0] == 1030.0
    assert kept[math.inf] == math.inf


def test_an_id_prefix_list_moves_with_the_ids_it_covers_only() -> None:
    versions = ReadModelVersions()
    tables = (t.CUSTOMER_HEALTH, t.ORGANIZATIONS, t.USERS)
    inside = "abcd1234-0000-4000-8000-000000000001"
    outside = "abce1234-0000-4000-8000-000000000001"
    prefixes = ("a", "ab", "abc", "abcd", "abcd1", "abcd1234")
    before = {p: versions.of_id_prefix(tables, p) for p in (*prefixes, "abce", "b")}
    versions.changed(t.CUSTOMER_HEALTH, [inside])
    assert all(versions.of_id_prefix(tables, p) != before[p] for p in prefixes)
    assert versions.of_id_prefix(tables, "abce") == before["abce"]
    assert versions.of_id_prefix(tables, "b") == before["b"]
    before = {p: versions.of_id_prefix(tables, p) for p in ("abcd", "abce", "abc", "b")}
    versions.changed(t.ORGANIZATIONS, [outside])  # a new organization under abce
    assert versions.of_id_prefix(tables, "abcd") == before["abcd"]
    assert versions.of_id_prefix(tables, "abce") != before["abce"]
    assert versions.of_id_prefix(tables, "abc") != before["abc"]
    assert versions.of_id_prefix(tables, "b") == before["b"]
    for whole in (t.CUSTOMER_HEALTH, t.USERS):  # a whole table: every prefix
        before = {p: versions.of_id_prefix(tables, p) for p in ("abcd", "b")}
        versions.changed(whole)
        assert all(versions.of_id_prefix(tables, p) != before[p] for p in ("abcd", "b"))


def test_the_id_prefix_is_read_from_the_query_as_the_route_reads_it() -> None:
    assert id_prefix(b"q=ABcd-12&limit=5") == "abcd12"
    assert id_prefix(b"limit=5") is None
    assert id_prefix(b"q=ab&q=cd") is None  # which one the route takes is not ours to guess
    assert id_prefix(b"q=xyz") is None  # refused by the route: not kept
    assert id_prefix(b"q=") is None
    assert id_prefix(b"q=--") is None
    assert id_prefix(b"q=" + b"a" * 33) is None


def test_a_list_may_lag_a_change_for_its_bound_from_when_it_was_computed() -> None:
    cache = ResponseCache()
    key = (USER, b"/api/v1/organizations?")
    cache.put(key, (1,), math.inf, answer(), computed_at=10.0)
    assert cache.lookup(key, (1,), now=100.0) == answer()  # unchanged: served at any age
    assert cache.lookup(key, (2,), now=11.9, may_lag=0.0) == "changed"  # exact: dropped
    assert cache.lookup(key, (2,), now=11.9, may_lag=2.0) == "absent"
    cache.put(key, (1,), math.inf, answer(), computed_at=10.0)
    assert cache.lookup(key, (2,), now=11.9, may_lag=2.0) == Lagging(answer(), 10.0)
    assert cache.lookup(key, (2,), now=12.0, may_lag=2.0) == "changed"  # past its bound
    assert cache.lookup(key, (2,), now=12.0, may_lag=2.0) == "absent"
    cache.put(key, (1,), 11.0, answer(), computed_at=10.0)
    assert cache.lookup(key, (2,), now=11.5, may_lag=2.0) == "expired"  # the clock first


async def settle(app: CachedReads) -> None:
    """Until the background refreshes the middleware started are done."""
    while app._background:
        await asyncio.gather(*app._background)


async def test_a_lagging_list_is_served_and_computed_again_in_the_background() -> None:
    secret = "a-test-secret-of-at-least-32-bytes-long"
    state = CacheState(ResponseCache(), ApiMetrics(), list_staleness=2.0)
    state.live(until=math.inf)
    routes_app = CountingApp()
    app = CachedReads(routes_app, state, TokenVerifier(hs256_secret=secret.encode()))
    token = issue_hs256(secret, USER, timedelta(minutes=5))
    lists = "/api/v1/organizations"
    organization = str(uuid.uuid4())
    page = f"/api/v1/organizations/{organization}"

    def age(path: str, seconds: float) -> None:
        for (_, target), entry in state.cache._entries.items():
            if target.startswith(path.encode() + b"?"):
                entry.computed_at -= seconds

    assert await call(app, "GET", lists, token) == (200, b'{"call": 1}')
    state.changed(t.CUSTOMER_HEALTH, [organization])
    # younger than half its bound: served as it is, nothing computed
    assert await call(app, "GET", lists, token) == (200, b'{"call": 1}')
    await settle(app)
    assert routes_app.calls == 1
    # from half its bound on: still served, and computed again meanwhile
    age(lists, 1.5)
    assert await call(app, "GET", lists, token) == (200, b'{"call": 1}')
    await settle(app)
    assert routes_app.calls == 2
    assert await call(app, "GET", lists, token) == (200, b'{"call": 2}')
    # past its bound: computed before it is answered
    state.changed(t.CUSTOMER_HEALTH, [organization])
    age(lists, 2.5)
    assert await call(app, "GET", lists, token) == (200, b'{"call": 3}')
    # who may see what changed: nothing kept is served, lagging or not
    state.changed(t.CUSTOMER_HEALTH, [organization])
    assert await call(app, "GET", lists, token) == (200, b'{"call": 3}')
    state.changed(t.USERS)
    assert await call(app, "GET", lists, token) == (200, b'{"call": 4}')
    # nor after a write through the API, which the writer must see at once
    state.changed(t.CUSTOMER_HEALTH, [organization])
    await call(app, "POST", f"{page}/milestones/m/acknowledge", token)  # call 5
    assert await call(app, "GET", lists, token) == (200, b'{"call": 6}')
    # an organization's page never lags
    assert await call(app, "GET", page, token) == (200, b'{"call": 7}')
    state.changed(t.CUSTOMER_HEALTH, [organization])
    assert await call(app, "GET", page, token) == (200, b'{"call": 8}')
    await settle(app)
    assert routes_app.calls == 8


async def test_a_failing_route_behind_the_cache_still_answers_its_500() -> None:
    secret = "a-test-secret-of-at-least-32-bytes-long"
    framework = FastAPI()

    @framework.get("/api/v1/organizations")
    async def fails() -> None:
        raise RuntimeError("a bug in a route")

    state = CacheState(ResponseCache(), ApiMetrics())
    state.live(until=math.inf)
    app = CachedReads(framework, state, TokenVerifier(hs256_secret=secret.encode()))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    token = issue_hs256(secret, USER, timedelta(minutes=5))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/organizations",
        "raw_path": b"/api/v1/organizations",
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "query_string": b"",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    with pytest.raises(RuntimeError, match="a bug in a route"):
        await app(scope, receive, send)  # raised on, for the server to log
    assert sent and sent[0]["status"] == 500  # and the client got the framework's 500
    assert len(state.cache) == 0 and not state.flights
