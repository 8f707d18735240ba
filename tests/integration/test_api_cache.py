"""The read API's response cache over real PostgreSQL, real roles, real notifications.

Nothing is mocked: the API runs as a LOGIN role in cs_dashboard with its cache
and its listener; writes come from other connections (as the service's writer
role where its grants allow) and announce themselves through migration 0050's
triggers. Whether a request touched the database is read from pg_stat_activity:
a backend's state_change moves with every statement it runs, so a hit leaves
every one of the API's backends as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from healthscore.api.invalidation import APPLICATION_NAME
from healthscore.api.session import IdentityBindingFailed
from healthscore.store import sql
from tests.integration import test_api
from tests.integration.test_api import NOW, World, forged, names, superuser_fetch
from tests.utils import schema_builders as b
from tests.utils.api import bearer

world = test_api.world  # the API over the same organizations and users
LIST = "/api/v1/organizations"


async def settle(world: World) -> None:
    """Until the API's listener has heard every change committed before now."""
    async with asyncio.timeout(20):
        await world.app.state.api.listener.settle()


async def api_backends(world: World) -> dict[int, tuple[datetime, str]]:
    """The API pool's backends: when each last changed state, and its last statement."""
    rows = await superuser_fetch(
        world.url,
        "SELECT pid, state_change, query FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'healthscore-api'",
    )
    return {r["pid"]: (r["state_change"], r["query"]) for r in rows}


async def as_writer(world: World, statement: str, *args: Any) -> None:
    """A statement as the consumers run theirs: as healthscore_writer, committed."""
    conn = await asyncpg.connect(world.url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE healthscore_writer")
            await conn.execute(statement, *args)
    finally:
        await conn.close()


async def as_superuser(world: World, statement: str, *args: Any) -> None:
    conn = await asyncpg.connect(world.url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


def counted(world: World, outcome: str) -> float:
    value = world.app.state.api.cache.metrics.registry.get_sample_value(
        "healthscore_api_cache_requests_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_a_hit_runs_nothing_in_the_database(world: World) -> None:
    first = await world.get("admin", LIST)
    assert first.status_code == 200
    before = await api_backends(world)
    assert before  # the control below: a miss does move them
    hits = counted(world, "hit")
    again = await world.get("admin", LIST)
    assert again.status_code == 200 and again.content == first.content
    assert counted(world, "hit") == hits + 1
    assert await api_backends(world) == before
    # another request (a miss) does run statements
    assert (await world.get("admin", LIST, limit=2)).status_code == 200
    assert await api_backends(world) != before


async def test_a_projector_write_invalidates_the_lists(world: World) -> None:
    bloom = world.orgs["bloom"]
    first = (await world.get("admin", LIST)).json()["items"][0]
    assert first["score_change_7d"] == -18
    await as_writer(
        world, "UPDATE customer_health SET score_change_7d = -21 WHERE organization_id = $1", bloom
    )
    await settle(world)
    before = await api_backends(world)
    first = (await world.get("admin", LIST)).json()["items"][0]
    assert first["score_change_7d"] == -21
    assert await api_backends(world) != before


async def test_an_interaction_write_invalidates_interactions_and_pages_not_lists(
    world: World,
) -> None:
    vow = world.orgs["vow"]
    support_before = (await world.get("support", "/api/v1/interactions")).json()["items"]
    page_before = (await world.get("admin", f"/api/v1/organizations/{vow}")).json()
    listed = await world.get("admin", LIST)
    new = b.support_interaction(
        vow, assigned_to=world.users["support"], subject="Seating chart will not save"
    )
    new["opened_at"] = NOW
    conn = await asyncpg.connect(world.url)
    try:
        await b.insert_row(conn, "support_interactions", new)
    finally:
        await conn.close()
    await settle(world)
    support_after = (await world.get("support", "/api/v1/interactions")).json()["items"]
    assert {i["id"] for i in support_after} == {
        str(new["id"]),
        *(i["id"] for i in support_before),
    }
    page_after = (await world.get("admin", f"/api/v1/organizations/{vow}")).json()
    assert str(new["id"]) in {i["id"] for i in page_after["open_interactions"]}
    assert str(new["id"]) not in {i["id"] for i in page_before["open_interactions"]}
    # the lists read no interactions: still the kept answer, no statement run
    before = await api_backends(world)
    assert (await world.get("admin", LIST)).content == listed.content
    assert await api_backends(world) == before


async def test_an_acknowledgment_is_seen_at_once_by_its_author(world: World) -> None:
    vow = world.orgs["vow"]
    milestones = f"/api/v1/organizations/{vow}/milestones"
    page = f"/api/v1/organizations/{vow}"
    assert (await world.get("admin", milestones)).json()["items"][0]["acknowledged_at"] is None
    assert (await world.get("admin", page)).json()["milestones"]["acknowledged"] == 0
    acknowledged = await world.post("admin", f"{milestones}/first_client_added/acknowledge")
    assert acknowledged.status_code == 200
    # no waiting for the notification: the write moved this process's versions itself
    item = (await world.get("admin", milestones)).json()["items"][0]
    assert item["acknowledged_at"] is not None
    assert item["acknowledged_by"] == str(world.users["admin"])
    assert (await world.get("admin", page)).json()["milestones"]["acknowledged"] == 1


async def test_a_write_that_changed_nothing_keeps_every_answer(world: World) -> None:
    """Only a write that may have changed something moves the versions: a POST without a
    valid credential (401), to no route (404) or refused by its route (4xx) keeps every
    kept answer. Before, any POST under /api/v1/, from anybody, emptied the cache."""
    kept = await world.get("admin", LIST)
    assert kept.status_code == 200
    vow = world.orgs["vow"]
    acknowledge = f"/api/v1/organizations/{vow}/milestones/first_client_added/acknowledge"
    reward = f"/api/v1/organizations/{world.orgs['bloom']}/milestones/clients_10/reward"
    assert (await world.client.post(acknowledge)).status_code == 401
    forged_admin = {"Authorization": forged(world.users["admin"])}
    assert (await world.client.post(acknowledge, headers=forged_admin)).status_code == 401
    assert (await world.client.post("/api/v1/anything")).status_code == 404
    assert (await world.post("member", "/api/v1/anything")).status_code == 404
    assert (await world.post("member", acknowledge)).status_code == 404
    assert (await world.post("admin", reward, {})).status_code == 409
    assert await hits_without_statements(world, "admin", LIST) == kept.content
    # a write that changed a row still moves them (its author sees it at once)
    assert (await world.post("admin", acknowledge)).status_code == 200
    assert len(world.app.state.api.cache.cache) == 0


async def test_acknowledging_again_keeps_every_answer(world: World) -> None:
    """Acknowledging a milestone again changes nothing and answers 200 with the existing
    acknowledgment: any user who sees one acknowledged milestone could repeat it to empty
    every user's kept answers at will. Only the first acknowledgment moves the versions."""
    vow = world.orgs["vow"]
    acknowledge = f"/api/v1/organizations/{vow}/milestones/first_client_added/acknowledge"
    first = await world.post("admin", acknowledge)
    assert first.status_code == 200
    assert len(world.app.state.api.cache.cache) == 0
    await settle(world)
    kept = await world.get("admin", LIST)
    assert kept.status_code == 200
    for _ in range(3):
        again = await world.post("admin", acknowledge)
        assert again.status_code == 200
        assert again.json()["acknowledged_at"] == first.json()["acknowledged_at"]
    assert await hits_without_statements(world, "admin", LIST) == kept.content


async def test_one_users_distinct_requests_cannot_push_out_everybody_elses_answers(
    world: World,
) -> None:
    """Every distinct query string is a key of its own (a parameter the route ignores, a
    cursor the client wrote), so one member, who sees nothing, could fill the whole cache
    with empty answers and push out every admin's. A user's own answers hold an eighth of
    it at most: past that they replace their own least recently used."""
    store = world.app.state.api.cache.cache
    store.max_entries = 64
    kept = await world.get("admin", LIST)
    page = await world.get("admin", f"/api/v1/organizations/{world.orgs['vow']}")
    assert kept.status_code == page.status_code == 200
    for n in range(store.max_entries):
        assert (await world.get("member", LIST, junk=n)).status_code == 200
    assert await hits_without_statements(world, "admin", LIST) == kept.content
    assert (
        await hits_without_statements(world, "admin", f"/api/v1/organizations/{world.orgs['vow']}")
        == page.content
    )
    # the member's latest answers are kept all the same
    hits = counted(world, "hit")
    assert (await world.get("member", LIST, junk=store.max_entries - 1)).status_code == 200
    assert counted(world, "hit") == hits + 1


async def test_the_query_strings_a_user_makes_keys_of_count_against_their_share(
    world: World,
) -> None:
    """A key is the path and the whole query string, up to the server's 64 KiB request
    line with a parameter the route ignores: a member's empty answers under such keys
    were counted as their few hundred bytes, so 4,096 of them held 256 MiB in a cache
    bounded at 64 MiB. The key's bytes count with its answer's."""
    store = world.app.state.api.cache.cache
    store.max_bytes = 1024 * 1024  # a user's share: 128 KiB
    junk = "x" * 60_000
    for n in range(16):
        response = await world.get("member", LIST, junk=f"{n}{junk}")
        assert response.status_code == 200
    assert len(store) <= 2  # two such keys fill the share
    assert store.bytes >= len(store) * 60_000


async def test_eight_users_together_cannot_push_out_everybody_elses_answers(
    world: World,
) -> None:
    """Each user's own answers hold an eighth of the cache, so eight members asking
    distinct queries emptied it: every admin's shared answers and every other user's
    went. The users' answers hold half together, the largest holder giving one up."""
    store = world.app.state.api.cache.cache
    store.max_entries = 64
    conn = await asyncpg.connect(world.url)
    try:
        for n in range(8):
            member = b.user_profile(role="member")
            await b.insert_row(conn, "user_profiles", member)
            world.users[f"member{n}"] = member["id"]
    finally:
        await conn.close()
    await settle(world)  # the new profiles dropped every answer: start from here
    vow_page = f"/api/v1/organizations/{world.orgs['vow']}"
    kept = {
        ("admin", LIST): await world.get("admin", LIST),
        ("admin", vow_page): await world.get("admin", vow_page),
        # a user's own (not clock-bound: the interactions are kept a second at most)
        ("support", "/api/v1/me"): await world.get("support", "/api/v1/me"),
    }
    assert all(response.status_code == 200 for response in kept.values())
    for n in range(8):
        for junk in range(store.max_entries):
            assert (await world.get(f"member{n}", LIST, junk=junk)).status_code == 200
    for (role, path), response in kept.items():
        assert await hits_without_statements(world, role, path) == response.content, path


async def test_a_role_change_invalidates_what_the_user_was_shown(world: World) -> None:
    member = world.users["member"]
    assert await names(world, "member") == []
    assert await names(world, "member") == []  # kept
    await as_superuser(world, "UPDATE user_profiles SET role = 'admin' WHERE id = $1", member)
    await settle(world)
    assert await names(world, "member") == ["bloom", "vow", "veil", "petal", "aisle"]
    await as_superuser(world, "UPDATE user_profiles SET role = 'member' WHERE id = $1", member)
    await settle(world)
    assert await names(world, "member") == []


async def test_a_signing_key_retirement_invalidates_every_answer(world: World) -> None:
    state = world.app.state.api
    key_id = state.signing_key.key_id
    assert (await world.get("admin", LIST)).status_code == 200
    hits = counted(world, "hit")
    assert (await world.get("admin", LIST)).status_code == 200
    assert counted(world, "hit") == hits + 1
    # retired an hour from now: served until (a margin before) then, not after
    await as_superuser(
        world,
        "UPDATE app_signing_keys SET retired_at = now() + interval '1 hour' WHERE key_id = $1",
        key_id,
    )
    await settle(world)
    now, monotonic = datetime.now().timestamp(), asyncio.get_running_loop().time()
    retires_at = state.cache.key_retires_at
    assert now + 3500 < retires_at < now + 3700
    live = state.cache.live_until - 0.001
    assert state.cache.serving(now, min(live, monotonic))
    assert not state.cache.serving(retires_at, min(live, monotonic))
    # retired now: nothing kept is served; the database refuses the key
    await as_superuser(
        world, "UPDATE app_signing_keys SET retired_at = now() WHERE key_id = $1", key_id
    )
    await settle(world)
    with pytest.raises(IdentityBindingFailed):
        await world.get("admin", LIST)


async def test_one_users_answer_never_reaches_another(world: World) -> None:
    bloom = world.orgs["bloom"]
    page = f"/api/v1/organizations/{bloom}"
    for _ in range(2):  # a miss, then a hit for the admin
        assert len((await world.get("admin", LIST)).json()["items"]) == 5
        assert (await world.get("admin", page)).status_code == 200
    # right after the admin's answers were kept, under the same paths and queries
    assert (await world.get("member", LIST)).json()["items"] == []
    assert (await world.get("support", LIST)).json()["items"] == []
    assert (await world.get("member", page)).status_code == 404
    me = (await world.get("member", "/api/v1/me")).json()
    assert me["user_id"] == str(world.users["member"]) and me["role"] == "member"
    # concurrent misses of the same path by different users: each their own answer
    await as_writer(
        world,
        "UPDATE customer_health SET score_change_7d = -19 WHERE organization_id = $1",
        bloom,
    )
    await settle(world)
    roles = ["admin", "member", "support"] * 8
    pages = await asyncio.gather(*(world.get(role, LIST) for role in roles))
    assert [len(p.json()["items"]) for p in pages] == [
        5 if role == "admin" else 0 for role in roles
    ]


async def test_two_authorization_headers_are_refused_and_nothing_is_kept_for_either(
    world: World,
) -> None:
    # Starlette's headers.get (the route) takes the first header, the cache took the
    # last: the answer the route computed for one user was kept under the other's key
    admin, member = (world.auth(role)["Authorization"] for role in ("admin", "member"))
    for values in ([member, admin], [admin, member]):
        for path in (LIST, f"/api/v1/organizations/{world.orgs['bloom']}", "/api/v1/me"):
            headers = [("Authorization", value) for value in values]
            both = await world.client.get(path, headers=headers)
            assert both.status_code == 401, (path, both.text)
            assert both.json()["detail"] == "send one Authorization header, not several"
            assert 'error="invalid_request"' in both.headers["www-authenticate"]
    assert len((await world.get("admin", LIST)).json()["items"]) == 5
    assert (await world.get("member", LIST)).json()["items"] == []
    assert (
        await world.get("member", f"/api/v1/organizations/{world.orgs['bloom']}")
    ).status_code == 404
    assert (await world.get("member", "/api/v1/me")).json()["role"] == "member"


async def test_concurrent_misses_of_one_key_share_one_computation(world: World) -> None:
    await world.get("admin", LIST)
    await as_writer(
        world,
        "UPDATE customer_health SET score_change_7d = -17 WHERE organization_id = $1",
        world.orgs["bloom"],
    )
    await settle(world)
    misses, shared = counted(world, "miss"), counted(world, "shared")
    pages = await asyncio.gather(*(world.get("admin", LIST) for _ in range(12)))
    assert {p.content for p in pages} == {pages[0].content}
    assert pages[0].json()["items"][0]["score_change_7d"] == -17
    assert counted(world, "miss") == misses + 1
    # the others waited for it (or, arriving after it, found it kept)
    assert counted(world, "shared") > shared


async def test_expired_and_forged_tokens_get_401_after_the_users_answer_was_kept(
    world: World,
) -> None:
    admin = world.users["admin"]
    assert (await world.get("admin", LIST)).status_code == 200
    assert (await world.get("admin", LIST)).status_code == 200
    # expired 5 s ago: within the verifier's leeway, but the database refuses it
    expired = await world.client.get(
        LIST, headers={"Authorization": bearer(admin, valid_for=timedelta(seconds=-5))}
    )
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    long_expired = await world.client.get(
        LIST, headers={"Authorization": bearer(admin, valid_for=timedelta(minutes=-5))}
    )
    assert long_expired.status_code == 401
    assert (
        await world.client.get(LIST, headers={"Authorization": forged(admin)})
    ).status_code == 401
    assert (await world.client.get(LIST)).status_code == 401


async def test_the_listeners_loss_disables_the_cache_until_it_is_back(world: World) -> None:
    state = world.app.state.api
    bloom = world.orgs["bloom"]
    assert (await world.get("admin", LIST)).status_code == 200
    listeners = await superuser_fetch(
        world.url,
        "SELECT pid, usename FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = $1",
        APPLICATION_NAME,
    )
    assert len(listeners) == 1
    login = listeners[0]["usename"]
    # it cannot come back while the role may not log in (the pool keeps its connections)
    await as_superuser(world, f'ALTER ROLE "{login}" NOLOGIN')
    with capture_logs() as logs:
        await as_superuser(world, "SELECT pg_terminate_backend($1)", listeners[0]["pid"])
        async with asyncio.timeout(20):
            while state.listener.live.is_set():  # noqa: ASYNC110 (cleared by the listener)
                await asyncio.sleep(0.05)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["api_cache_listener_lost"]
    assert (
        state.cache.metrics.registry.get_sample_value("healthscore_api_cache_listener_losses_total")
        == 1
    )
    assert len(state.cache.cache) == 0
    # blind: every request goes to the database, and a change nobody announced is seen
    await as_superuser(
        world, "UPDATE customer_health SET score_change_7d = -3 WHERE organization_id = $1", bloom
    )
    bypassed = counted(world, "bypass")
    for _ in range(2):
        before = await api_backends(world)
        first = (await world.get("admin", LIST)).json()["items"][0]
        assert first["score_change_7d"] == -3
        assert await api_backends(world) != before
    assert counted(world, "bypass") == bypassed + 2
    assert len(state.cache.cache) == 0
    # back: caching again
    await as_superuser(world, f'ALTER ROLE "{login}" LOGIN')
    async with asyncio.timeout(30):
        await state.listener.live.wait()
    await world.get("admin", LIST)
    before = await api_backends(world)
    assert (await world.get("admin", LIST)).status_code == 200
    assert await api_backends(world) == before
    metrics = generate_latest(world.app.state.metrics.registry).decode()  # the ops port's
    assert "healthscore_api_cache_listener_up 1.0" in metrics


async def test_etag_answers_304_until_the_answer_changes(world: World) -> None:
    first = await world.get("admin", LIST)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-store"
    headers = {**world.auth("admin"), "If-None-Match": etag}
    same = await world.client.get(LIST, headers=headers)
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    await as_writer(
        world,
        "UPDATE customer_health SET score_change_7d = -11 WHERE organization_id = $1",
        world.orgs["bloom"],
    )
    await settle(world)
    changed = await world.client.get(LIST, headers=headers)
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["items"][0]["score_change_7d"] == -11
    metrics = generate_latest(world.app.state.metrics.registry).decode()  # the ops port's
    assert "healthscore_api_cache_not_modified_total 1.0" in metrics


async def test_errors_and_writes_are_never_kept(world: World) -> None:
    missing = f"/api/v1/organizations/{uuid.uuid4()}"
    for _ in range(2):
        assert (await world.get("admin", missing)).status_code == 404
    assert len(world.app.state.api.cache.cache) == 0
    reward = f"/api/v1/organizations/{world.orgs['bloom']}/milestones/clients_10/reward"
    for _ in range(2):
        assert (await world.post("admin", reward, {})).status_code == 409
    assert len(world.app.state.api.cache.cache) == 0


async def hits_without_statements(world: World, role: str, path: str) -> bytes:
    """The kept answer of `path`: a hit that runs nothing in the database."""
    before, hits = await api_backends(world), counted(world, "hit")
    response = await world.get(role, path)
    assert response.status_code == 200, response.text
    assert counted(world, "hit") == hits + 1, path
    assert await api_backends(world) == before, path
    return response.content


async def test_a_write_to_one_organization_keeps_the_others_pages(world: World) -> None:
    bloom, vow = world.orgs["bloom"], world.orgs["vow"]
    pages = {
        org: [f"/api/v1/organizations/{org}{suffix}" for suffix in ("", "/history", "/milestones")]
        for org in (bloom, vow)
    }
    kept = {}
    for paths in pages.values():
        for path in paths:
            kept[path] = (await world.get("admin", path)).content
            assert await hits_without_statements(world, "admin", path) == kept[path]
    listed = (await world.get("admin", LIST)).content
    # as a consumer batch writes: the score, the history, an interaction, an alert of vow
    await as_writer(
        world,
        "UPDATE customer_health SET health_score = 57, score_change_7d = -3"
        " WHERE organization_id = $1",
        vow,
    )
    await as_writer(
        world,
        "INSERT INTO health_score_history (organization_id, scored_at, health_score,"
        " churn_probability, risk_level, components, score_model_version, cause)"
        " VALUES ($1, $2, 57, 0.5, 'medium', '{}', 'v3', 'events')",
        vow,
        NOW,
    )
    await as_superuser(
        world,
        "UPDATE support_interactions SET subject = 'Calendar sync fixed' WHERE id = $1",
        world.interactions["other"],
    )
    await settle(world)
    # bloom's pages: still the kept answers, no statement run
    for path in pages[bloom]:
        assert await hits_without_statements(world, "admin", path) == kept[path]
    # vow's pages: misses showing the new rows
    misses = counted(world, "miss")
    page, history, milestones = [await world.get("admin", path) for path in pages[vow]]
    assert counted(world, "miss") == misses + 3
    assert page.json()["health_score"] == 57
    assert "Calendar sync fixed" in {i["subject"] for i in page.json()["open_interactions"]}
    assert [p["health_score"] for p in history.json()["points"]][-1:] == [57]
    assert milestones.content == kept[pages[vow][2]]  # recomputed, the same rows
    # the lists read every organization: they moved on
    after = (await world.get("admin", LIST)).json()["items"]
    assert (await world.get("admin", LIST)).content != listed
    assert {i["organization_id"]: i["health_score"] for i in after}[str(vow)] == 57
    # row-level security still decides, for the same paths right after the admin's hits
    for role in ("member", "support"):
        for path in pages[bloom][:2] + pages[vow][:2]:
            assert (await world.get(role, path)).status_code == 404, (role, path)


async def test_an_organizations_page_is_not_kept_past_its_next_follow_up(world: World) -> None:
    bloom = world.orgs["bloom"]
    page = f"/api/v1/organizations/{bloom}"
    # bloom's other open interaction falls due in 2 s: the page changes then, with no write
    await as_superuser(
        world,
        "UPDATE support_interactions SET status = 'open', follow_up_required = true,"
        " follow_up_at = now() + interval '2 seconds' WHERE id = $1",
        world.interactions["resolved"],
    )
    await settle(world)
    first = (await world.get("admin", page)).json()
    assert first["overdue_follow_ups"] == 1
    await hits_without_statements(world, "admin", page)
    await asyncio.sleep(2.5)
    later = (await world.get("admin", page)).json()
    assert later["overdue_follow_ups"] == 2
    assert all(i["overdue"] for i in later["open_interactions"])
    # with no follow-up ahead, the page is kept past the clock-bound answers' second
    await as_superuser(
        world,
        "UPDATE support_interactions SET follow_up_completed_at = now() WHERE organization_id = $1",
        bloom,
    )
    await settle(world)
    assert (await world.get("admin", page)).json()["overdue_follow_ups"] == 0
    await asyncio.sleep(1.2)
    await hits_without_statements(world, "admin", page)


async def test_a_new_organization_keeps_every_page_and_moves_the_lists(world: World) -> None:
    bloom = world.orgs["bloom"]
    paths = [f"/api/v1/organizations/{bloom}{suffix}" for suffix in ("", "/history", "/milestones")]
    kept = {}
    for path in paths:
        kept[path] = (await world.get("admin", path)).content
    listed = await world.get("admin", LIST)
    misses = counted(world, "miss")
    # the placeholder the consumers insert for an organization seen for the first time
    await as_writer(
        world,
        "INSERT INTO organizations (id) SELECT unnest($1::uuid[]) ON CONFLICT (id) DO NOTHING",
        [uuid.uuid4()],
    )
    await settle(world)
    for path in paths:
        assert await hits_without_statements(world, "admin", path) == kept[path]
    assert counted(world, "miss") == misses
    # the lists read every organization: recomputed (the same rows: it has no score yet)
    assert (await world.get("admin", LIST)).content == listed.content
    assert counted(world, "miss") == misses + 1
    # a rename is announced as the whole table: every page moves on
    await as_superuser(world, "UPDATE organizations SET name = 'Bloom & Co' WHERE id = $1", bloom)
    await settle(world)
    page = await world.get("admin", paths[0])
    assert page.json()["organization_name"] == "Bloom & Co"
    assert counted(world, "miss") == misses + 2


async def test_an_id_prefix_list_is_kept_past_writes_to_other_ids(world: World) -> None:
    bloom, vow = world.orgs["bloom"], world.orgs["vow"]
    prefix = str(bloom)[:4]
    assert not str(vow).startswith(prefix)  # random ids: one in 65,536 would share it
    kept = await world.get("admin", LIST, q=prefix)
    assert [i["organization_id"] for i in kept.json()["items"]] == [str(bloom)]

    async def kept_answer() -> bytes:  # a hit that runs nothing in the database
        before, hits = await api_backends(world), counted(world, "hit")
        response = await world.get("admin", LIST, q=prefix)
        assert counted(world, "hit") == hits + 1
        assert await api_backends(world) == before
        return response.content

    assert await kept_answer() == kept.content
    # a write to an organization outside the prefix: the full list moves, this one stays
    await as_writer(
        world, "UPDATE customer_health SET health_score = 58 WHERE organization_id = $1", vow
    )
    await settle(world)
    assert await kept_answer() == kept.content
    # a write to bloom: recomputed, with the new score
    await as_writer(
        world, "UPDATE customer_health SET health_score = 36 WHERE organization_id = $1", bloom
    )
    await settle(world)
    misses = counted(world, "miss")
    after = await world.get("admin", LIST, q=prefix)
    assert counted(world, "miss") == misses + 1
    assert after.json()["items"][0]["health_score"] == 36


async def test_a_list_lags_a_score_write_within_its_bound_but_never_a_role_table_change(
    world: World,
) -> None:
    cache = world.app.state.api.cache
    bloom = world.orgs["bloom"]

    async def bloom_change() -> Any:
        items = (await world.get("admin", LIST)).json()["items"]
        return next(i["score_change_7d"] for i in items if i["organization_id"] == str(bloom))

    before_value = await bloom_change()
    cache.list_staleness = 60.0  # far beyond this test: nothing is computed again by age
    try:
        first = await world.get("admin", LIST)
        await as_writer(
            world,
            "UPDATE customer_health SET score_change_7d = score_change_7d - 1"
            " WHERE organization_id = $1",
            bloom,
        )
        await settle(world)
        backends = await api_backends(world)
        lagging = counted(world, "lagging")
        again = await world.get("admin", LIST)
        assert again.content == first.content  # the answer from before the write
        assert counted(world, "lagging") == lagging + 1
        assert await api_backends(world) == backends  # served without a statement
        # any change of who may see what clears it, lagging or not
        await as_superuser(
            world,
            "UPDATE user_profiles SET full_name = full_name WHERE id = $1",
            world.users["member"],
        )
        await settle(world)
        assert await bloom_change() == before_value - 1
    finally:
        cache.list_staleness = 0.0
        await as_writer(
            world,
            "UPDATE customer_health SET score_change_7d = $2 WHERE organization_id = $1",
            bloom,
            before_value,
        )
        await settle(world)


async def test_a_new_assignees_placeholder_profile_keeps_every_answer(world: World) -> None:
    """The service inserts a placeholder profile (id only) for each support assignee it
    first sees in events; each announced the whole user_profiles table, and every kept
    answer of every API process was dropped (review 32b). A placeholder sees nothing and
    is shown nowhere: it keeps them; a real profile inserted still drops them."""
    kept = await world.get("admin", LIST)
    assert kept.status_code == 200
    await as_writer(world, sql.ENSURE_USER_PROFILES, [uuid.uuid4(), uuid.uuid4()])
    await settle(world)
    assert await hits_without_statements(world, "admin", LIST) == kept.content
    await as_superuser(
        world,
        "INSERT INTO user_profiles (id, role, email) VALUES ($1, 'admin', 'new@example.com')",
        uuid.uuid4(),
    )
    await settle(world)
    assert len(world.app.state.api.cache.cache) == 0
