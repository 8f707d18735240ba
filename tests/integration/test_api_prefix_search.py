"""The id-prefix search (q) pages exactly like the lists it filters, under each sort.

A prefix of one hex digit walks the sort's index; of two or more, the statement reads
the prefix's id range first and sorts it (routes.RANGE_FIRST_DIGITS, read_api.py).
Either way, paging with the cursor must return exactly the organizations whose id
starts with the prefix, in the sort's order, each once: compared here with a plain
query of the table as its owner. The data has many equal sort values (so the cursor's
id decides) and organizations without a 7-day change (the NULL part of that sort), and
ids made to share prefixes so that every width has pages to turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from healthscore.api.routes import RANGE_FIRST_DIGITS, read_by_id_range_first
from healthscore.store import read_api as q
from tests.utils import schema_builders as b
from tests.utils.api import api_client, api_config, api_login, bearer, every_organization_page

# 600 organizations; 144 of them made to start with "ab", 96 of those with "abc", 48 "abcd"
GENERATE = """
SELECT setseed(0.14);
INSERT INTO organizations (id, name)
    SELECT CASE WHEN g % 25 < 6
                THEN overlay(gen_random_uuid()::text PLACING left('abcd', 2 + g % 25 / 2)
                             FROM 1)::uuid
                ELSE gen_random_uuid() END,
           'org ' || g
    FROM generate_series(1, 600) g;
INSERT INTO customer_health (organization_id, health_score, churn_probability, risk_factors,
                             score_change_7d, scored_at, score_model_version)
    SELECT id, 5 + (n % 9) * 11, (n % 7) * 0.14,
           CASE WHEN n % 3 = 0
                THEN '[{"factor": "inactivity", "value": 20, "impact": -5, "detail": ""}]'::jsonb
                ELSE '[]' END,
           CASE WHEN n % 5 = 0 THEN NULL ELSE n % 6 - 3 END, now(), 'v1'
    FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM organizations) o;
ANALYZE;
"""

ORDER = {
    "churn_probability": "churn_probability DESC, organization_id",
    "health_score": "health_score, organization_id",
    "score_change_7d": "score_change_7d NULLS LAST, organization_id",
}

# the API's filters with the prefix, and the same as a condition of the owner's query
FILTERS: dict[str, tuple[dict[str, Any], str]] = {
    "none": ({}, "true"),
    "bands": (
        {"health_status": ["critical", "good"]},
        "health_status IN ('critical', 'good')",
    ),
    "risk levels": ({"risk_level": ["low", "high"]}, "risk_level IN ('low', 'high')"),
    "factor": ({"factor": "inactivity"}, """risk_factors @> '[{"factor": "inactivity"}]'"""),
}


@dataclass
class Crowd:
    url: str
    client: httpx.AsyncClient
    app: FastAPI
    auth: dict[str, str]


@pytest.fixture(scope="module")
async def crowd(
    database_factory: Any, migrated_template: str, pg_admin_url: str
) -> AsyncIterator[Crowd]:
    url = await database_factory(template=migrated_template)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(GENERATE)
        admin = b.user_profile(role="admin")
        await b.insert_row(conn, "user_profiles", admin)
    finally:
        await conn.close()
    async with (
        api_login(pg_admin_url, url) as login_url,
        api_client(await api_config(url, login_url, pool_size=2)) as (client, app),
    ):
        yield Crowd(url, client, app, {"Authorization": bearer(admin["id"])})


async def owner_ids(crowd: Crowd, prefix: str, sort: str, condition: str) -> list[str]:
    conn = await asyncpg.connect(crowd.url)
    try:
        rows = await conn.fetch(
            "SELECT organization_id::text FROM customer_health"
            " WHERE replace(organization_id::text, '-', '') LIKE $1 || '%'"
            f" AND {condition} ORDER BY {ORDER[sort]}",
            prefix.replace("-", ""),
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def paged_ids(crowd: Crowd, params: dict[str, Any]) -> list[str]:
    return await every_organization_page(crowd.client, params, crowd.auth)


@pytest.mark.parametrize("prefix", ["a", "ab", "abc", "abcd", "abcd-"])
@pytest.mark.parametrize("sort", ORDER)
async def test_paging_a_prefix_returns_its_organizations_in_sort_order(
    crowd: Crowd, sort: str, prefix: str
) -> None:
    expected = await owner_ids(crowd, prefix, sort, "true")
    # pages of 5: the cursor falls inside runs of equal sort values, and in the NULL part
    got = await paged_ids(crowd, {"q": prefix, "sort": sort, "limit": 5})
    assert got == expected
    assert len(expected) > 10, "the prefix must take several pages"


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("prefix", ["a", "ab"])
@pytest.mark.parametrize("sort", ORDER)
async def test_a_prefix_with_each_filter_pages_like_the_owners_query(
    crowd: Crowd, sort: str, prefix: str, name: str
) -> None:
    params, condition = FILTERS[name]
    expected = await owner_ids(crowd, prefix, sort, condition)
    got = await paged_ids(crowd, {"q": prefix, "sort": sort, "limit": 4, **params})
    assert got == expected
    assert expected, "the filter must leave rows to page"


def test_the_prefixes_above_take_both_statements() -> None:
    # one digit walks the sort's index, two or more read the id range first; a dash
    # is not a digit
    assert RANGE_FIRST_DIGITS == 2
    assert not read_by_id_range_first("a") and not read_by_id_range_first("a-")
    assert all(read_by_id_range_first(p) for p in ("ab", "abc", "abcd", "abcd-"))
    assert not read_by_id_range_first(None)


RANGE_FIRST = q.LIST_ORGANIZATIONS_IN_RANGE
SLICED = {
    "churn_probability": q.LIST_ORGANIZATIONS_BY_CHURN,
    "health_score": q.LIST_ORGANIZATIONS_BY_SCORE,
    "score_change_7d": q.LIST_ORGANIZATIONS_BY_CHANGE_7D,
}


async def plans_by_statement(crowd: Crowd) -> dict[str, tuple[int, int]]:
    """Generic and custom plans executed so far, per statement, on the API's connections."""
    pool = crowd.app.state.api.pool
    held = [await pool.acquire() for _ in range(pool.get_max_size())]
    counts: dict[str, tuple[int, int]] = {}
    try:
        for conn in held:
            for row in await conn.fetch(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            ):
                generic, custom = counts.get(row[0], (0, 0))
                counts[row[0]] = (generic + row[1], custom + row[2])
    finally:
        for conn in held:
            await pool.release(conn)
    return counts


@pytest.mark.parametrize("sort", ORDER)
async def test_the_route_runs_the_statement_of_the_prefix_width(crowd: Crowd, sort: str) -> None:
    def added(
        before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], sql: str
    ) -> tuple[int, int]:
        was, now = before.get(sql, (0, 0)), after.get(sql, (0, 0))
        return now[0] - was[0], now[1] - was[1]

    # a page size of its own: no answer of the tests above comes from the cache
    before = await plans_by_statement(crowd)
    await paged_ids(crowd, {"q": "abc", "sort": sort, "limit": 9})
    after = await plans_by_statement(crowd)
    generic, custom = added(before, after, RANGE_FIRST[sort])
    assert generic > 0 and custom == 0, (generic, custom)  # one plan per connection
    assert added(before, after, SLICED[sort]) == (0, 0)

    before = after
    await paged_ids(crowd, {"q": "a", "sort": sort, "limit": 9})
    after = await plans_by_statement(crowd)
    assert added(before, after, RANGE_FIRST[sort]) == (0, 0)
    generic, custom = added(before, after, SLICED[sort])
    assert custom > 0 and generic == 0, (generic, custom)  # planned with the values
