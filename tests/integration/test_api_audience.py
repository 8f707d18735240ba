"""Answers shared by an audience: the database says who sees the same rows.

The read API keeps a GET answer for the audience `app_audience()` (migration 0061)
puts its caller in: every admin shares the admins' answers, anybody else keeps their
own. Real PostgreSQL, real roles, the API's own cache and listener; whether a request
ran statements is read from pg_stat_activity, as in test_api_cache.
"""

from __future__ import annotations

import asyncpg
import pytest

from healthscore.api.auth import Principal
from healthscore.api.session import audience_of
from tests.integration import test_api
from tests.integration.test_api import World, names, superuser_fetch
from tests.integration.test_api_cache import api_backends, as_superuser, counted, settle
from tests.utils import schema_builders as b

world = test_api.world
LIST = "/api/v1/organizations"
# how PostgreSQL prints the policies' admin test (migration 0030)
ADMIN = "( SELECT (app_user_role() = 'admin'::text))"


def lookups(world: World) -> float:
    value = world.app.state.api.cache.metrics.registry.get_sample_value(
        "healthscore_api_cache_audience_lookups_total"
    )
    return value or 0.0


async def second_admin(world: World) -> None:
    conn = await asyncpg.connect(world.url)
    try:
        user = b.user_profile(role="admin")
        await b.insert_row(conn, "user_profiles", user)
    finally:
        await conn.close()
    world.users["second_admin"] = user["id"]
    await settle(world)


async def test_every_admin_sees_every_row_of_every_table_the_dashboard_reads(
    world: World,
) -> None:
    """What makes app_audience() true: for each table under row-level security that
    cs_dashboard may read, a permissive policy admits an admin by the role alone, and
    no restrictive policy narrows it. Fails when a policy changes who sees what."""
    tables = await superuser_fetch(
        world.url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relrowsecurity"
        " AND has_any_column_privilege('cs_dashboard', c.oid, 'SELECT')",
    )
    policies = await superuser_fetch(
        world.url,
        "SELECT tablename, policyname, permissive, cmd, qual FROM pg_policies"
        " WHERE schemaname = 'public' AND roles && ARRAY['cs_dashboard', 'public']::name[]",
    )
    assert {r["relname"] for r in tables} >= {
        "customer_health",
        "organizations",
        "success_milestones",
        "support_interactions",
        "health_score_history",
        "alert_outbox",
        "user_profiles",
    }
    assert [p["policyname"] for p in policies if p["permissive"] != "PERMISSIVE"] == []
    for table in tables:
        quals = [
            p["qual"]
            for p in policies
            if p["tablename"] == table["relname"] and p["cmd"] in ("SELECT", "ALL")
        ]
        assert any(q == ADMIN or q.endswith(f" OR {ADMIN})") for q in quals), (
            table["relname"],
            quals,
        )


async def test_the_database_names_the_admins_audience_and_nobody_elses(world: World) -> None:
    state = world.app.state.api
    verify = state.verifier.verify
    for role, audience in (("admin", "admin"), ("support", None), ("member", None)):
        principal = verify(world.auth(role)["Authorization"])
        assert await audience_of(state.pool, state.signing_key, principal) == audience


async def test_admins_share_one_answer_per_page(world: World) -> None:
    await second_admin(world)
    bloom = world.orgs["bloom"]
    asked = lookups(world)
    # the second admin's first request asks the database for their audience, once
    assert (await world.get("second_admin", LIST, limit=1)).status_code == 200
    assert lookups(world) == asked + 1
    for path in (LIST, f"/api/v1/organizations/{bloom}", f"/api/v1/organizations/{bloom}/history"):
        first = await world.get("admin", path)
        assert first.status_code == 200
        before = await api_backends(world)
        hits = counted(world, "hit")
        other = await world.get("second_admin", path)
        assert other.status_code == 200 and other.content == first.content
        assert counted(world, "hit") == hits + 1
        assert await api_backends(world) == before  # no statement ran for the second admin
    assert lookups(world) == asked + 2  # and the first admin's, once


@pytest.mark.parametrize("path", [LIST, "/api/v1/me", "/api/v1/interactions"])
async def test_nobody_outside_the_audience_gets_its_answers(world: World, path: str) -> None:
    await second_admin(world)
    admin = await world.get("admin", path)
    assert admin.status_code == 200
    for role in ("support", "other_support", "member"):
        hits = counted(world, "hit")
        theirs = await world.get(role, path)
        assert theirs.status_code == 200 and theirs.content != admin.content
        assert counted(world, "hit") == hits
    # answers that name their caller are never shared, not even between admins
    hits = counted(world, "hit")
    other = await world.get("second_admin", path)
    assert other.status_code == 200
    assert counted(world, "hit") == hits + (1 if path == LIST else 0)
    if path == "/api/v1/me":
        assert other.json()["user_id"] == str(world.users["second_admin"])


async def test_a_demoted_admin_leaves_the_audience(world: World) -> None:
    await second_admin(world)
    everyone = ["bloom", "vow", "veil", "petal", "aisle"]
    assert await names(world, "second_admin") == everyone
    assert await names(world, "admin") == everyone
    await as_superuser(
        world, "UPDATE user_profiles SET role = 'member' WHERE id = $1", world.users["second_admin"]
    )
    await settle(world)
    assert await names(world, "second_admin") == []
    # the admins' answer is not the demoted user's, in either order
    assert await names(world, "admin") == everyone
    assert await names(world, "second_admin") == []


async def test_a_demotion_between_the_audience_and_the_query_keeps_nothing_for_the_admins(
    world: World,
) -> None:
    """An admin demoted after the cache asked their audience and before the route's
    transaction: the list computed under their new role was kept under the admins'
    key (a list may lag, so a moved version did not stop it), and every admin was
    shown the member's empty list. Nothing computed across a change of who may see
    what is kept."""
    await second_admin(world)
    everyone = ["bloom", "vow", "veil", "petal", "aisle"]
    state = world.app.state.api.cache
    asked = state.audience_of
    assert asked is not None
    demoted = world.users["second_admin"]

    async def demoted_meanwhile(principal: Principal) -> str | None:
        audience: str | None = await asked(principal)
        if principal.user_id == demoted:
            await as_superuser(
                world, "UPDATE user_profiles SET role = 'member' WHERE id = $1", demoted
            )
            await settle(world)  # heard: the cache is cleared before the route runs
        return audience

    state.audience_of = demoted_meanwhile
    try:
        assert await names(world, "second_admin") == []  # the route ran as a member
    finally:
        state.audience_of = asked
    assert await names(world, "admin") == everyone
