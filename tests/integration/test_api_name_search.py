"""The organization list found by name (name=): each word typed is the start of a word of
the organization's name, in any order, case ignored; pages sort and filter exactly like
the lists without it; names the caller may not see find nothing.

The expected organizations are computed here in Python from the names as written (the
words of a name, the prefix rule), not by PostgreSQL's text search; the paging is
compared with a plain query of the table as its owner over that set.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.utils import schema_builders as b
from tests.utils.api import api_client, api_config, api_login, bearer, every_organization_page

FIRST = ["Bloom", "Harbor", "Golden", "Silver", "Rosé", "Ivory"]
SECOND = ["& Vow", "Lights", "Gate", "Petal", "O'Brien"]
KIND = ["Weddings", "Photography", "Florals", "Catering"]

ORDER = {
    "churn_probability": "churn_probability DESC, organization_id",
    "health_score": "health_score, organization_id",
    "score_change_7d": "score_change_7d NULLS LAST, organization_id",
}


def names() -> list[str]:
    return [f"{a} {b} {k}" for a in FIRST for b in SECOND for k in KIND]  # 120


# names whose words PostgreSQL's parser keeps whole (a host, a version, a word with
# vowel signs), searched as typed; each expected found by exactly these searches
ODD_NAMES = {
    "Shop.com Weddings Ltd": ["shop.com", "Shop.com ltd", "shop"],
    "C3.ai Events": ["c3.ai", "C3.AI events"],
    "Web 2.0 Labs": ["2.0 labs", "web 2.0"],
    "मधुबन वेडिंग्स": ["मधुबन", "वेडिंग्स"],
}


def found(name: str, text: str) -> bool:
    """The rule the API documents, in Python: each word typed starts a word of the name."""
    words = [w.lower() for w in re.findall(r"[^\W_]+", name)]
    typed = re.findall(r"[^\W_]+", text)
    return bool(typed) and all(any(w.startswith(t.lower()) for w in words) for t in typed)


@dataclass
class Crowd:
    url: str
    client: httpx.AsyncClient
    admin: dict[str, str]
    member: dict[str, str]
    ids: dict[str, str]  # name -> organization id


@pytest.fixture(scope="module")
async def crowd(
    database_factory: Any, migrated_template: str, pg_admin_url: str
) -> AsyncIterator[Crowd]:
    url = await database_factory(template=migrated_template)
    conn = await asyncpg.connect(url)
    ids: dict[str, str] = {}
    try:
        for n, name in enumerate(names() + list(ODD_NAMES)):
            org = b.organization(name=name)
            await b.insert_row(conn, "organizations", org)
            # few distinct sort values: the cursor falls inside runs of equal ones; every
            # fifth without a 7-day change (that sort's NULL part)
            await conn.execute(
                "INSERT INTO customer_health (organization_id, health_score, churn_probability,"
                " risk_factors, score_change_7d, scored_at, score_model_version)"
                " VALUES ($1, $2, $3, $4::jsonb, $5, now(), 'v1')",
                org["id"],
                5 + (n % 9) * 11,
                (n % 7) * 0.14,
                '[{"factor": "inactivity", "value": 20, "impact": -5, "detail": ""}]'
                if n % 3 == 0
                else "[]",
                None if n % 5 == 0 else n % 6 - 3,
            )
            ids[name] = str(org["id"])
        # a placeholder (no name yet): found by no name
        placeholder = b.organization(name=None)
        await b.insert_row(conn, "organizations", placeholder)
        await conn.execute(
            "INSERT INTO customer_health (organization_id, health_score, churn_probability,"
            " scored_at, score_model_version) VALUES ($1, 50, 0.5, now(), 'v1')",
            placeholder["id"],
        )
        await conn.execute("ANALYZE")
        admin = b.user_profile(role="admin")
        member = b.user_profile(role="member")
        for user in (admin, member):
            await b.insert_row(conn, "user_profiles", user)
    finally:
        await conn.close()
    async with (
        api_login(pg_admin_url, url) as login_url,
        api_client(await api_config(url, login_url, pool_size=2)) as (client, _app),
    ):
        yield Crowd(
            url,
            client,
            {"Authorization": bearer(admin["id"])},
            {"Authorization": bearer(member["id"])},
            ids,
        )


async def paged(crowd: Crowd, params: dict[str, Any], auth: dict[str, str]) -> list[str]:
    return await every_organization_page(crowd.client, params, auth)


async def owner_order(crowd: Crowd, ids: list[str], sort: str, condition: str) -> list[str]:
    conn = await asyncpg.connect(crowd.url)
    try:
        rows = await conn.fetch(
            "SELECT organization_id::text FROM customer_health"
            f" WHERE organization_id = ANY($1::uuid[]) AND {condition} ORDER BY {ORDER[sort]}",
            [uuid.UUID(i) for i in ids],
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


SEARCHES = {
    # one word, a word's start, case ignored
    "bloom": 20,
    "BLO": 20,
    # two words in any order, across punctuation ("&")
    "vow bloom": 4,
    "weddings Vow": 6,
    # an apostrophe separates words as it does in the name
    "o'brien": 24,
    "brien golden cat": 1,
    # accents are letters (a word of their own, not split at the "é")
    "rosé": 20,
    # the start of a word only: "oom" is inside "Bloom", no word starts with it
    "oom": 0,
    # no letter or digit: nothing
    "!!! &": 0,
}


@pytest.mark.parametrize("text", SEARCHES)
async def test_each_word_typed_starts_a_word_of_the_name(crowd: Crowd, text: str) -> None:
    expected = {i for name, i in crowd.ids.items() if found(name, text)}
    assert len(expected) == SEARCHES[text]  # the rule above agrees with the data's design
    got = await paged(crowd, {"name": text, "limit": 7}, crowd.admin)
    assert sorted(got) == sorted(expected)
    assert len(got) == len(set(got))


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_a_name_is_found_by_its_words_as_postgresql_splits_them(
    crowd: Crowd, name: str
) -> None:
    # the words were split at punctuation before they reached PostgreSQL: "Shop.com"
    # was searched as "shop" and "com", neither a word of the name as indexed; Hindi
    # words were cut at their vowel signs
    for text in ODD_NAMES[name]:
        got = await paged(crowd, {"name": text}, crowd.admin)
        assert got == [crowd.ids[name]], (text, got)


@pytest.mark.parametrize("sort", ORDER)
@pytest.mark.parametrize(
    "filters",
    [
        ({}, "true"),
        ({"health_status": ["critical", "good"]}, "health_status IN ('critical', 'good')"),
        ({"risk_level": ["low", "high"]}, "risk_level IN ('low', 'high')"),
        ({"factor": "inactivity"}, """risk_factors @> '[{"factor": "inactivity"}]'"""),
    ],
    ids=["none", "bands", "risk levels", "factor"],
)
async def test_a_name_search_pages_in_sort_order_with_each_filter(
    crowd: Crowd, sort: str, filters: tuple[dict[str, Any], str]
) -> None:
    params, condition = filters
    matching = [i for name, i in crowd.ids.items() if found(name, "weddings")]
    expected = await owner_order(crowd, matching, sort, condition)
    assert len(expected) > 4, "the search must take several pages"
    got = await paged(crowd, {"name": "weddings", "sort": sort, "limit": 4, **params}, crowd.admin)
    assert got == expected


async def test_names_the_caller_may_not_see_find_nothing(crowd: Crowd) -> None:
    # a member sees no organization's health, and so finds none by its name
    assert await paged(crowd, {"name": "bloom"}, crowd.member) == []
    assert await paged(crowd, {"name": "bloom"}, crowd.admin)


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"name": "bloom", "q": "ab"}, "not both"),
        ({"name": "a b c d e f g h i"}, "at most 8 words"),
        ({"name": "bloom\x00vow"}, "NUL"),
        ({"name": "x" * 101}, "100"),
    ],
)
async def test_a_name_search_it_cannot_serve_is_refused(
    crowd: Crowd, params: dict[str, str], detail: str
) -> None:
    response = await crowd.client.get("/api/v1/organizations", params=params, headers=crowd.admin)
    assert response.status_code == 422, response.text
    assert detail in response.text


async def test_an_empty_name_is_no_search(crowd: Crowd) -> None:
    # the dashboard's empty box: the whole list, the placeholder included
    everyone = await paged(crowd, {"name": "  ", "limit": 200}, crowd.admin)
    assert len(everyone) == len(crowd.ids) + 1  # the placeholder too
