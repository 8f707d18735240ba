"""Every sort and filter of the read API is served by an index, under row-level security.

The API's own statements (healthscore.store.read_api) are EXPLAINed in a real
cs_dashboard session logged in as an admin (so the plans include the policies),
on the generated data of test_indexes (5k organizations, 20k interactions)
after ANALYZE, with the values bound as the API binds them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from healthscore.api.routes import RANGE_FIRST_DIGITS, name_query
from healthscore.api.session import SEARCH_SETTINGS
from healthscore.store import read_api as q
from healthscore.store.identity import LOGIN, SigningKey, mint_token
from tests.conftest import DatabaseFactory
from tests.integration.test_indexes import GENERATE, SEARCHED_ROW
from tests.utils.api import api_login, signing_key

SEARCHED_WORD = hashlib.md5(str(SEARCHED_ROW).encode()).hexdigest()[3:11]

# a slice of organizations with no 7-day history, and a daily trail for one of them
EXTRA = """
UPDATE customer_health SET score_change_7d = NULL WHERE health_score < 5;
INSERT INTO health_score_history (organization_id, scored_at, health_score, churn_probability,
                                  risk_level, components, score_model_version, cause)
SELECT h.organization_id, now() - g * interval '1 day', 50, 0.3, 'medium', '{}', 'v1', 'events'
FROM customer_health h, generate_series(0, 40) g;
INSERT INTO alert_outbox (alert_id, organization_id, kind, episode, payload)
SELECT gen_random_uuid(), organization_id, 'risk_raised', 1, '{}' FROM customer_health;
ANALYZE;
"""


@dataclass
class Session:
    conn: asyncpg.Connection
    organization_id: uuid.UUID
    support_user: uuid.UUID
    factor: str


@pytest.fixture(scope="module")
async def session(
    database_factory: DatabaseFactory, migrated_template: str, pg_admin_url: str
) -> AsyncIterator[Session]:
    url = await database_factory(template=migrated_template)
    setup = await asyncpg.connect(url)
    try:
        await setup.execute(GENERATE)
        await setup.execute(EXTRA)
        admin = await setup.fetchval("SELECT id FROM user_profiles WHERE role = 'admin' LIMIT 1")
        support = await setup.fetchval(
            "SELECT assigned_to FROM support_interactions WHERE status = 'open'"
            " AND assigned_to IS NOT NULL LIMIT 1"
        )
        org = await setup.fetchval("SELECT organization_id FROM support_interactions LIMIT 1")
        factor = await setup.fetchval("SELECT risk_factors -> 0 ->> 'factor' FROM customer_health")
    finally:
        await setup.close()
    key: SigningKey = await signing_key(url)
    async with api_login(pg_admin_url, url) as login_url:
        conn = await asyncpg.connect(
            login_url,
            server_settings={"role": "cs_dashboard", "plan_cache_mode": "force_custom_plan"},
        )
        try:
            token = mint_token(key, admin, expires_at=datetime.now(UTC) + timedelta(hours=1))
            await conn.fetchval(LOGIN, token)
            yield Session(conn, org, support, factor)
        finally:
            await conn.close()


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


async def explain(session: Session, sql: str, *args: Any) -> list[dict[str, Any]]:
    raw = await session.conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return nodes(plan[0]["Plan"])


@dataclass(frozen=True)
class ReturnedQuery:
    """The statement a store function returns (its RETURN QUERY), its parameters as $n:
    the organization page and history run inside functions (migration 0052)."""

    function: str
    parameters: dict[str, str]

    async def sql(self, session: Session) -> str:
        source = await session.conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = $1", self.function
        )
        found = re.search(r"RETURN QUERY\s+(.*?);\s*PERFORM public\.app_logout", source, re.S)
        assert found is not None, self.function
        query = found[1]
        for name, placeholder in self.parameters.items():
            # not a JSON key ('days') nor a named argument (days => ...)
            query = re.sub(rf"(?<!')\b{name}\b(?!')(?!\s*=>)", placeholder, query)
        return query


PAGE = ReturnedQuery("app_organization_page", {"organization": "$1::uuid"})
HISTORY = ReturnedQuery("app_organization_history", {"organization": "$1::uuid", "days": "$2::int"})


def indexes(plan: list[dict[str, Any]]) -> set[str]:
    return {n["Index Name"] for n in plan if "Index Name" in n}


def seq_scans(plan: list[dict[str, Any]]) -> set[str]:
    return {n["Relation Name"] for n in plan if n["Node Type"] == "Seq Scan"}


def org_args(
    status: list[str] | None = None,
    levels: list[str] | None = None,
    factor: str | None = None,
    prefix: tuple[uuid.UUID, uuid.UUID] | None = None,
    cursor: tuple[Decimal, uuid.UUID] | None = None,
) -> list[Any]:
    return [
        status,
        levels,
        json.dumps([{"factor": factor}]) if factor else None,
        prefix[0] if prefix else None,
        prefix[1] if prefix else None,
        cursor[0] if cursor else None,
        cursor[1] if cursor else None,
        51,
    ]


SORTS = {
    "churn_probability": (
        q.LIST_ORGANIZATIONS_BY_CHURN,
        {"customer_health_high_risk_idx", "customer_health_lower_risk_idx"},
    ),
    "health_score": (q.LIST_ORGANIZATIONS_BY_SCORE, {"customer_health_status_score_idx"}),
    "score_change_7d": (q.LIST_ORGANIZATIONS_BY_CHANGE_7D, {"customer_health_score_change_7d_idx"}),
}


def extra_args(sort: str, levels: list[str] | None = None) -> list[Any]:
    """The churn statement's probability range of the risk levels asked for."""
    if sort != "churn_probability":
        return []
    if levels == ["high", "critical"]:
        return [Decimal("0.5"), None, True, False]
    return [None, None, True, True]


@pytest.mark.parametrize("sort", SORTS)
async def test_each_sort_reads_its_indexes_not_the_table(session: Session, sort: str) -> None:
    sql, expected = SORTS[sort]
    for cursor in (None, (Decimal("50"), uuid.UUID(int=0))):
        plan = await explain(session, sql, *org_args(cursor=cursor), *extra_args(sort))
        assert expected <= indexes(plan), (sort, cursor, indexes(plan))
        assert "customer_health" not in seq_scans(plan), sort


FILTERS: dict[str, tuple[dict[str, Any], str]] = {
    "health_status": ({"status": ["critical"]}, "customer_health_status_score_idx"),
    "risk_level": ({"levels": ["high", "critical"]}, "customer_health_high_risk_idx"),
    "factor": ({"factor": "<factor>"}, "customer_health_risk_factors_idx"),
}  # the id prefix (q): below, by its width


@pytest.mark.parametrize("sort", SORTS)
@pytest.mark.parametrize("name", FILTERS)
async def test_each_filter_with_each_sort_uses_an_index(
    session: Session, sort: str, name: str
) -> None:
    filters, serving = FILTERS[name]
    if name == "factor":
        filters = {"factor": session.factor}
    sql, sort_indexes = SORTS[sort]
    plan = await explain(
        session, sql, *org_args(**filters), *extra_args(sort, filters.get("levels"))
    )
    used = indexes(plan)
    assert "customer_health" not in seq_scans(plan), (name, sort, used)
    # served either by the filter's own index or by the sort's, whichever the planner
    # judges cheaper for these values
    assert used & ({serving} | sort_indexes), (name, sort, used)
    if (name, sort) in {("health_status", "health_score"), ("risk_level", "churn_probability")}:
        assert serving in used
    if name == "factor":
        assert serving in used, (name, sort, used)  # selective: the filter's index wins


@pytest.mark.parametrize("sort", SORTS)
async def test_a_name_search_reads_the_names_index_then_each_organization_by_id(
    session: Session, sort: str
) -> None:
    plan = await explain(
        session,
        q.LIST_ORGANIZATIONS_NAMED[sort],
        None,
        None,
        None,
        name_query("org 4217"),
        None,
        None,
        51,
    )
    assert "organizations_name_words_idx" in indexes(plan), indexes(plan)
    # the few organizations named so, each looked up by its id: no table read whole
    assert "customer_health_organization_id_key" in indexes(plan), indexes(plan)
    assert not seq_scans(plan) & {"customer_health", "organizations"}, seq_scans(plan)


# The id-prefix search (q) by the prefix's width (routes.RANGE_FIRST_DIGITS): a narrow
# prefix reads its id range once and sorts it, with one plan per connection (the route's
# generic plans); a wide one (one hex digit, 1/16 of the ids) walks the sort's indexes.
RANGE_FIRST = q.LIST_ORGANIZATIONS_IN_RANGE


def id_range(digits: str) -> tuple[uuid.UUID, uuid.UUID]:
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def customer_health_scans(plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [n for n in plan if n.get("Relation Name") == "customer_health"]


@pytest.mark.parametrize("width", [RANGE_FIRST_DIGITS, 4])
@pytest.mark.parametrize("sort", SORTS)
async def test_a_narrow_prefix_reads_its_id_range_once(
    session: Session, sort: str, width: int
) -> None:
    digits = session.organization_id.hex[:width]
    in_range = await session.conn.fetchval(
        "SELECT count(*) FROM customer_health WHERE organization_id BETWEEN $1 AND $2",
        *id_range(digits),
    )
    low, high = (f"'{u}'::uuid" for u in id_range(digits))
    values = ["NULL", "NULL", "NULL", low, high, "NULL", "NULL", "51"]
    plan = await explain_generic(session, RANGE_FIRST[sort], values, analyze=True)
    scans = customer_health_scans(plan)
    # one read of the table (not one per slice), by the id range, of the range's rows
    assert len(scans) == 1, [n["Node Type"] for n in scans]
    assert indexes(plan) == {"customer_health_organization_id_key", "organizations_pkey"}, indexes(
        plan
    )
    assert scans[0]["Actual Rows"] == in_range > 0, (scans[0]["Actual Rows"], in_range)
    # with a cursor as well: the keyset filters the range's rows, it reads no sort index
    plan = await explain_generic(
        session, RANGE_FIRST[sort], [*values[:5], "50", f"'{uuid.UUID(int=0)}'", "51"]
    )
    assert indexes(plan) == {"customer_health_organization_id_key", "organizations_pkey"}


@pytest.mark.parametrize("sort", SORTS)
async def test_a_wide_prefix_is_read_by_index_slice_by_slice(session: Session, sort: str) -> None:
    # one hex digit: the sliced statement, each slice by an index, its sort's or the id
    # range's, whichever the planner judges cheaper for the table's size (here, 5,000
    # organizations, mostly the range: 312 rows; at 100,000 the sort's, about 816 rows
    # for a page against 6,250: docs/read-side.md)
    digits = session.organization_id.hex[: RANGE_FIRST_DIGITS - 1]
    sql, _ = SORTS[sort]
    for cursor in (None, (Decimal("50"), uuid.UUID(int=0))):
        plan = await explain(
            session, sql, *org_args(prefix=id_range(digits), cursor=cursor), *extra_args(sort)
        )
        slices = {"churn_probability": 2, "health_score": 4}.get(sort, 1)
        assert len(customer_health_scans(plan)) == slices, (sort, cursor)
        assert "customer_health" not in seq_scans(plan), sort


async def test_organizations_without_a_weekly_change_are_read_by_id(session: Session) -> None:
    args = org_args()[:5]
    plan = await explain(session, q.LIST_ORGANIZATIONS_WITHOUT_CHANGE_7D, *args, None, 51)
    assert "customer_health" not in seq_scans(plan)
    assert indexes(plan) & {
        "customer_health_score_change_7d_idx",
        "customer_health_organization_id_key",
    }


async def test_a_filter_that_rules_a_slice_out_reads_none_of_it(session: Session) -> None:
    levels = ["high", "critical"]
    plan = await explain(
        session,
        q.LIST_ORGANIZATIONS_BY_CHURN,
        *org_args(levels=levels),
        *extra_args("churn_probability", levels),
    )
    assert "customer_health_lower_risk_idx" not in indexes(plan)
    plan = await explain(session, q.LIST_ORGANIZATIONS_BY_SCORE, *org_args(status=["good"]))
    # one band read, by its score index or (on this small table, sorting the band) the
    # band's churn index of 0031, whichever the planner judges cheaper
    banded = {"customer_health_status_score_idx", "customer_health_status_churn_idx"}
    scans = [n for n in plan if n.get("Index Name") in banded]
    assert len(scans) == 1 and "'good'" in scans[0]["Index Cond"], indexes(plan)
    plan = await explain(
        session,
        q.LIST_ORGANIZATIONS_IN_BANDS_BY_CHURN,
        *org_args(status=["at_risk"]),
        *extra_args("churn_probability")[:2],
    )
    scans = [n for n in plan if n.get("Index Name") == "customer_health_status_churn_idx"]
    assert len(scans) == 1 and "'at_risk'" in scans[0]["Index Cond"], indexes(plan)


@pytest.mark.parametrize("cursor", [None, (Decimal("0.5"), uuid.UUID(int=0))])
@pytest.mark.parametrize("levels", [None, ["high", "critical"]])
async def test_a_band_by_churn_reads_the_band_in_churn_order(
    session: Session, cursor: tuple[Decimal, uuid.UUID] | None, levels: list[str] | None
) -> None:
    # the band filter with the default sort: the band's slice of the churn order
    # (0031), not the churn indexes walked past the other bands
    plan = await explain(
        session,
        q.LIST_ORGANIZATIONS_IN_BANDS_BY_CHURN,
        *org_args(status=["at_risk", "critical"], cursor=cursor),
        *extra_args("churn_probability", levels)[:2],
    )
    scans = [n for n in plan if n.get("Index Name") == "customer_health_status_churn_idx"]
    assert len(scans) == 2, indexes(plan)
    assert {"customer_health_high_risk_idx", "customer_health_lower_risk_idx"}.isdisjoint(
        indexes(plan)
    )
    assert "customer_health" not in seq_scans(plan)
    # read in churn order (an index scan, then at most an incremental sort of equal
    # churn values), not collected by a bitmap and sorted
    assert {n["Node Type"] for n in scans} == {"Index Scan"}, [n["Node Type"] for n in scans]


def interaction_args(**given: Any) -> list[Any]:
    names = [
        "status",
        "assigned",
        "org",
        "types",
        "overdue",
        "q",
        "value",
        "nulls",
        "id",
    ]
    return [*(given.get(n) for n in names), 51]


INTERACTIONS: dict[str, tuple[str, dict[str, Any], str]] = {
    "support queue (assigned to me, open, oldest first)": (
        q.LIST_INTERACTIONS_OLDEST,
        {"status": ["open"], "assigned": "<support>"},
        "support_interactions_assigned_open_idx",
    ),
    "organization timeline": (
        q.LIST_INTERACTIONS_NEWEST,
        {"org": "<org>"},
        "support_interactions_organization_opened_idx",
    ),
    "overdue follow-ups": (
        q.LIST_INTERACTIONS_FOLLOW_UP,
        {"overdue": True},
        "support_interactions_follow_up_due_idx",
    ),
    "subject search": (
        q.LIST_INTERACTIONS_RELEVANCE,
        {"q": "<word>"},
        "support_interactions_subject_trgm_idx",
    ),
    "type": (
        q.LIST_INTERACTIONS_NEWEST,
        {"types": ["complaint"]},
        "support_interactions_type_opened_idx",
    ),
}


@pytest.mark.parametrize("case", INTERACTIONS)
async def test_interaction_filters_use_their_indexes(session: Session, case: str) -> None:
    sql, given, serving = INTERACTIONS[case]
    given = dict(given)
    if given.get("assigned") == "<support>":
        given["assigned"] = session.support_user
    if given.get("org") == "<org>":
        given["org"] = session.organization_id
    if given.get("q") == "<word>":
        given["q"] = SEARCHED_WORD
    plan = await explain(session, sql, *interaction_args(**given))
    assert serving in indexes(plan), (case, indexes(plan))
    assert "support_interactions" not in seq_scans(plan), case


@pytest.mark.parametrize("statement", [q.LIST_INTERACTIONS_RELEVANCE, q.LIST_INTERACTIONS_NEWEST])
@pytest.mark.parametrize("text", ["%%%", "___", "\\\\\\", "!?!", " - "])
async def test_a_search_text_without_a_trigram_reads_no_interaction(
    session: Session, statement: str, text: str
) -> None:
    """pg_trgm takes no trigram from a text without a letter or digit: the index had to
    be read whole and every row rechecked (a sequential scan of every interaction, for
    any logged-in user, at every request with a parameter the cache does not know),
    for a search that matches nothing."""
    plan = await explain(session, statement, *interaction_args(q=text))
    read = {n.get("Relation Name") for n in plan} | indexes(plan)
    assert not {"support_interactions", "support_interactions_subject_trgm_idx"} & read, read


async def test_a_long_search_text_reads_the_trigram_index_not_every_interaction(
    session: Session,
) -> None:
    """From about 75 characters (here), the planner judged the index's hundreds of
    trigrams dearer than reading every interaction and computing each subject's
    similarity: 0.4-0.6 s on these 20,000 against 5-9 ms by the index, growing with
    the table, for any user at every request. The route searches with SEARCH_SETTINGS."""
    rng = random.Random(18)
    text = " ".join(
        "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(3, 9))
        )
        for _ in range(40)
    )[:200]
    for sql in (q.LIST_INTERACTIONS_RELEVANCE, q.LIST_INTERACTIONS_NEWEST):
        async with session.conn.transaction():
            await session.conn.execute(SEARCH_SETTINGS)
            plan = await explain(session, sql, *interaction_args(q=text))
        assert "support_interactions_subject_trgm_idx" in indexes(plan), indexes(plan)
        assert "support_interactions" not in seq_scans(plan)


async def test_organization_page_statements_use_indexes(session: Session) -> None:
    org = session.organization_id
    page = await explain(session, await PAGE.sql(session), org)
    assert "customer_health_organization_id_key" in indexes(page)
    assert "support_interactions_organization_opened_idx" in indexes(page)
    assert not seq_scans(page) - {"organizations"}, seq_scans(page)
    history = await explain(session, await HISTORY.sql(session), org, 30)
    assert "health_score_history_organization_day_key" in indexes(history)
    assert "health_score_history" not in seq_scans(history)
    milestones = await explain(session, q.ORGANIZATION_MILESTONES, org)
    assert "success_milestones" not in seq_scans(milestones)


async def explain_generic(
    session: Session, sql: str, values: list[str] | None = None, *, analyze: bool = False
) -> list[dict[str, Any]]:
    """The plan that plan_cache_mode=force_generic_plan executes, for any parameter values
    (`values`: SQL literals to run it with, under `analyze`; NULLs if not given)."""
    conn = session.conn
    await conn.execute(f"PREPARE generic_statement AS {sql}")
    try:
        count = len((await conn.prepare(sql)).get_parameters())
        given = ", ".join(values or ["NULL"] * count)
        options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            raw = await conn.fetchval(f"EXPLAIN ({options}) EXECUTE generic_statement({given})")
    finally:
        await conn.execute("DEALLOCATE generic_statement")
    plan = raw if isinstance(raw, list) else json.loads(raw)
    return nodes(plan[0]["Plan"])


GENERIC: dict[str, tuple[str | ReturnedQuery, set[str]]] = {
    "organization page": (
        PAGE,
        {
            "customer_health_organization_id_key",
            "support_interactions_organization_opened_idx",
        },
    ),
    "visible": (q.ORGANIZATION_VISIBLE, {"customer_health_organization_id_key"}),
    "history": (HISTORY, {"health_score_history_organization_day_key"}),
    "milestones": (
        q.ORGANIZATION_MILESTONES,
        {
            "success_milestones_organization_id_milestone_type_key",
            "success_milestones_organization_achieved_idx",
        },
    ),
}


@pytest.mark.parametrize("name", GENERIC)
async def test_organization_page_statements_have_indexed_generic_plans(
    session: Session, name: str
) -> None:
    # the organization page's statements run with plan_cache_mode=force_generic_plan
    # (planned once per connection): their one plan, for any organization, reads by index
    statement, expected = GENERIC[name]
    sql = await statement.sql(session) if isinstance(statement, ReturnedQuery) else statement
    plan = await explain_generic(session, sql)
    assert expected & indexes(plan), (name, indexes(plan))
    assert not seq_scans(plan) - {"organizations", "user_profiles"}, (name, seq_scans(plan))
