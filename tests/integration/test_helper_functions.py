"""SQL helper functions: bands agree with healthscore.core.bands, trends, session identity."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from healthscore.core import bands
from tests.conftest import DatabaseFactory
from tests.utils import schema_builders as b

HEALTH_EDGES = ["0", "0.01", "39.99", "40", "40.01", "59.99", "60", "60.01", "79.99", "80"]
HEALTH_EDGES += ["80.01", "99.99", "100", "-1", "100.5", "39.999", "79.995", "59.9999999"]
RISK_EDGES = ["0", "0.0001", "0.2499", "0.25", "0.2501", "0.4999", "0.5", "0.5001"]
RISK_EDGES += ["0.7499", "0.75", "0.7501", "0.9999", "1", "0.24999999", "0.749999"]


@pytest.fixture(scope="module")
async def conn(
    database_factory: DatabaseFactory, migrated_template: str
) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(await database_factory(template=migrated_template))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.mark.parametrize("score", HEALTH_EDGES)
async def test_health_band_matches_python_at_the_edges(
    conn: asyncpg.Connection, score: str
) -> None:
    assert await conn.fetchval("SELECT health_band($1::numeric)", Decimal(score)) == (
        bands.health_band(float(score)).value
    )


@pytest.mark.parametrize("probability", RISK_EDGES)
async def test_risk_level_matches_python_at_the_edges(
    conn: asyncpg.Connection, probability: str
) -> None:
    assert await conn.fetchval("SELECT risk_level_for($1::numeric)", Decimal(probability)) == (
        bands.risk_level_for(float(probability)).value
    )


async def test_health_band_matches_python_on_every_storable_score(
    conn: asyncpg.Connection,
) -> None:
    """Every numeric(5,2) value in 0..100, i.e. every score customer_health can hold."""
    rows = await conn.fetch(
        "SELECT s, health_band(s) AS band"
        " FROM (SELECT (g / 100.0)::numeric(5,2) AS s FROM generate_series(0, 10000) g) v"
    )
    assert len(rows) == 10001
    mismatches = [
        (r["s"], r["band"]) for r in rows if bands.health_band(float(r["s"])).value != r["band"]
    ]
    assert mismatches == []


async def test_risk_level_matches_python_on_every_storable_probability(
    conn: asyncpg.Connection,
) -> None:
    """Every numeric(5,4) value in 0..1, i.e. every churn probability that can be stored."""
    rows = await conn.fetch(
        "SELECT p, risk_level_for(p) AS level"
        " FROM (SELECT (g / 10000.0)::numeric(5,4) AS p FROM generate_series(0, 10000) g) v"
    )
    assert len(rows) == 10001
    mismatches = [
        (r["p"], r["level"])
        for r in rows
        if bands.risk_level_for(float(r["p"])).value != r["level"]
    ]
    assert mismatches == []


async def test_band_functions_return_null_for_null(conn: asyncpg.Connection) -> None:
    assert await b.fetch_tuple(conn, "SELECT health_band(NULL), risk_level_for(NULL)") == (
        None,
        None,
    )


@pytest.mark.parametrize(
    ("current", "previous", "trend"),
    [
        ("70", "70", "stable"),
        ("72", "70", "stable"),
        ("68", "70", "stable"),
        ("72.01", "70", "improving"),
        ("67.99", "70", "declining"),
        ("100", "0", "improving"),
        ("0", "100", "declining"),
        ("50", None, None),
        (None, "50", None),
    ],
)
async def test_score_trend_has_a_two_point_dead_band(
    conn: asyncpg.Connection, current: str | None, previous: str | None, trend: str | None
) -> None:
    args = [None if v is None else Decimal(v) for v in (current, previous)]
    assert await conn.fetchval("SELECT score_trend($1::numeric, $2::numeric)", *args) == trend


async def test_function_attributes(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """SELECT proname, provolatile::text AS volatility, proparallel::text AS parallel,
                  prosecdef AS definer, proconfig, proowner::regrole::text AS owner
           FROM pg_proc WHERE pronamespace = 'public'::regnamespace
             AND proname IN ('health_band', 'risk_level_for', 'score_trend', 'app_user_id',
                             'app_user_role')"""
    )
    by_name = {r["proname"]: r for r in rows}
    assert set(by_name) == {
        "health_band",
        "risk_level_for",
        "score_trend",
        "app_user_id",
        "app_user_role",
    }
    for name in ("health_band", "risk_level_for", "score_trend"):
        assert (by_name[name]["volatility"], by_name[name]["parallel"]) == ("i", "s"), name
    # both read the session's identity table (0020): parallel workers cannot
    user = by_name["app_user_id"]
    assert (user["volatility"], user["parallel"]) == ("s", "r")
    assert user["proconfig"] == ["search_path=pg_catalog, pg_temp"]
    role = by_name["app_user_role"]
    assert (role["volatility"], role["parallel"]) == ("s", "r")
    assert role["proconfig"] == ["search_path=pg_catalog, public"]
    assert {r["owner"] for r in rows} == {"healthscore_owner"}
    assert sorted(n for n, r in by_name.items() if r["definer"]) == ["app_user_id", "app_user_role"]


async def _login(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    """Log the session in as `user_id` with a token the database mints (as a superuser may)."""
    token = await conn.fetchval("SELECT app_mint_token($1)", user_id)
    assert await conn.fetchval("SELECT app_login($1)", token) == user_id


@pytest.mark.parametrize(
    "setting",
    ["", "garbage", "not-a-uuid", "1234", "' OR 1=1 --", "00000000-0000-0000-0000-00000000000g"],
)
async def test_app_user_id_is_null_for_garbage(conn: asyncpg.Connection, setting: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT set_config('app.user_id', $1, true)", setting)
        assert await b.fetch_tuple(conn, "SELECT app_user_id(), app_user_role()") == (None, None)


async def test_app_user_id_ignores_the_setting_even_for_a_real_admin(
    conn: asyncpg.Connection,
) -> None:
    """Any session can set any setting, so app.user_id proves nothing and is not read."""
    admin = b.user_profile(role="admin")
    async with conn.transaction():
        await b.insert_row(conn, "user_profiles", admin)
        await conn.execute("SELECT set_config('app.user_id', $1, true)", str(admin["id"]))
        assert await b.fetch_tuple(conn, "SELECT app_user_id(), app_user_role()") == (None, None)


async def test_app_user_id_is_null_when_never_set(
    database_factory: DatabaseFactory, migrated_template: str
) -> None:
    fresh = await asyncpg.connect(await database_factory(template=migrated_template))
    try:
        assert await fresh.fetchval("SELECT current_setting('app.user_id', true)") is None
        assert await b.fetch_tuple(fresh, "SELECT app_user_id(), app_user_role()") == (None, None)
    finally:
        await fresh.close()


async def test_app_user_id_and_role_of_a_logged_in_user(conn: asyncpg.Connection) -> None:
    user = b.user_profile(role="support")
    tx = conn.transaction()
    await tx.start()
    try:
        await b.insert_row(conn, "user_profiles", user)
        await _login(conn, user["id"])
        assert await b.fetch_tuple(conn, "SELECT app_user_id(), app_user_role()") == (
            user["id"],
            "support",
        )
        # the role is read at every query: a demotion takes effect at once
        await conn.execute("UPDATE user_profiles SET role = 'member' WHERE id = $1", user["id"])
        assert await conn.fetchval("SELECT app_user_role()") == "member"
        await conn.execute("SELECT app_logout()")
        assert await b.fetch_tuple(conn, "SELECT app_user_id(), app_user_role()") == (None, None)
    finally:
        await tx.rollback()


async def test_app_user_role_ignores_a_hostile_search_path(conn: asyncpg.Connection) -> None:
    """SECURITY DEFINER with a pinned search_path: a shadowing table is never read."""
    user = b.user_profile(role="member")
    tx = conn.transaction()
    await tx.start()
    try:
        await b.insert_row(conn, "user_profiles", user)
        await conn.execute("CREATE SCHEMA hostile")
        await conn.execute("CREATE TABLE hostile.user_profiles (id uuid, role text)")
        await conn.execute("INSERT INTO hostile.user_profiles VALUES ($1, 'admin')", user["id"])
        await _login(conn, user["id"])
        await conn.execute("SET LOCAL search_path = hostile, public")
        assert await conn.fetchval("SELECT public.app_user_role()") == "member"
    finally:
        await tx.rollback()
