"""The read API over real PostgreSQL, as cs_dashboard under row-level security.

Nothing is mocked: the API connects as a LOGIN role in cs_dashboard, binds each
request's verified caller with app_login, and the policies decide. These tests
prove what each role gets through the HTTP API, that hidden rows answer exactly
like missing ones, and that identity never outlives its request on a pooled
connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import httpx
import jwt
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from healthscore.api.app import MAX_BODY_BYTES
from healthscore.api.models import (
    HistoryPoint,
    Interaction,
    InteractionPage,
    LastAlert,
    MilestoneCounts,
    OrganizationDetail,
    OrganizationHistory,
    OrganizationPage,
    RiskFactor,
    ScoreQuality,
)
from healthscore.api.session import create_api_pool
from healthscore.core.scoring.model import default_model
from healthscore.service.ops.metrics import Metrics
from healthscore.service.outcomes import OutcomeLabeller
from healthscore.store.migrate import load_migrations, migrations_path
from tests.utils import schema_builders as b
from tests.utils.api import JWT_SECRET, api_client, api_config, api_login, bearer

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class World:
    url: str
    client: httpx.AsyncClient
    app: FastAPI
    orgs: dict[str, uuid.UUID]
    users: dict[str, uuid.UUID]
    interactions: dict[str, uuid.UUID] = field(default_factory=dict)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": bearer(self.users[role])}

    async def get(self, role: str, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.auth(role))

    async def post(self, role: str, path: str, body: Any = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.auth(role))


def factor(name: str, impact: float, detail: str = "") -> dict[str, Any]:
    return {"factor": name, "value": 1.0, "impact": impact, "detail": detail or f"{name} hurts"}


# name -> (score, churn probability, risk factors, 7-day change)
ORGANIZATIONS: dict[str, tuple[str, str, list[dict[str, Any]], str | None]] = {
    "bloom": (
        "35.00",
        "0.8200",
        [
            factor("cancellation_request", -25, "A cancellation request is open."),
            factor("inactivity", -12, "No activity for 20 days."),
            factor("few_logins", -3),
            factor("shallow_usage", -1),
        ],
        "-18.00",
    ),
    "vow": ("55.00", "0.5500", [factor("inactivity", -9)], "-5.00"),
    "petal": ("62.00", "0.3000", [factor("few_logins", -4)], None),
    "aisle": ("85.00", "0.0500", [], "3.00"),
    "veil": ("45.00", "0.4000", [factor("inactivity", -7)], "-10.00"),
}


async def build(conn: asyncpg.Connection) -> tuple[dict[str, uuid.UUID], dict[str, uuid.UUID]]:
    orgs: dict[str, uuid.UUID] = {}
    for name, (score, churn, factors, change) in ORGANIZATIONS.items():
        org = b.organization(name=name.title() + " Weddings")
        await b.insert_row(conn, "organizations", org)
        orgs[name] = org["id"]
        await b.insert_row(
            conn,
            "customer_health",
            b.customer_health(
                org["id"],
                health_score=Decimal(score),
                churn_probability=Decimal(churn),
                risk_factors=json.dumps(factors),
                score_change_7d=None if change is None else Decimal(change),
                score_change_30d=Decimal("-30") if name == "bloom" else None,
                feature_usage=json.dumps({"forms": 3, "journeys": 1}),
                scored_at=NOW,
            ),
        )
    users: dict[str, uuid.UUID] = {}
    for role in ("admin", "support", "other_support", "member"):
        user = b.user_profile(role="support" if role == "other_support" else role)
        user["full_name"] = role.replace("_", " ").title()
        await b.insert_row(conn, "user_profiles", user)
        users[role] = user["id"]
    return orgs, users


@pytest.fixture
async def world(migrated_database: str, pg_admin_url: str) -> AsyncIterator[World]:
    conn = await asyncpg.connect(migrated_database)
    interactions: dict[str, uuid.UUID] = {}
    try:
        orgs, users = await build(conn)
        bloom, vow = orgs["bloom"], orgs["vow"]
        for org_id, milestone, reward in (
            (bloom, "first_client_added", "badge"),
            (bloom, "clients_10", None),
            (vow, "first_client_added", "badge"),
        ):
            await b.insert_row(
                conn,
                "success_milestones",
                b.success_milestone(
                    org_id,
                    milestone_type=milestone,
                    reward_type=reward,
                    reward_status="pending" if reward else None,
                    reward_value=Decimal("0") if reward else None,
                    achieved_at=NOW - timedelta(days=3),
                ),
            )
        for key, org_id, assignee, overrides in (
            (
                "overdue",
                bloom,
                users["support"],
                {
                    "subject": "Cannot export the guest list",
                    "follow_up_required": True,
                    "follow_up_at": NOW - timedelta(days=1),
                    "opened_at": NOW - timedelta(days=4),
                },
            ),
            (
                "resolved",
                bloom,
                users["support"],
                {"subject": "Invoice question", "status": "resolved", "opened_at": NOW},
            ),
            (
                "other",
                vow,
                users["other_support"],
                {"subject": "Calendar sync broken", "opened_at": NOW - timedelta(days=2)},
            ),
            (
                "unassigned",
                vow,
                None,
                {"subject": "Export to PDF fails", "opened_at": NOW - timedelta(days=1)},
            ),
        ):
            row = b.support_interaction(org_id, assigned_to=assignee, **overrides)
            await b.insert_row(conn, "support_interactions", row)
            interactions[key] = row["id"]
        # one row per organization and day (migration 0040): each day's last score
        for days_ago, hour, score in ((2, 12, 60), (1, 18, 50), (0, 0, 35)):
            at = NOW.replace(hour=hour, minute=0, second=0) - timedelta(days=days_ago)
            await b.insert_row(
                conn,
                "health_score_history",
                b.health_score_history(
                    bloom,
                    scored_at=min(at, NOW),
                    health_score=Decimal(score),
                    risk_level="high",
                    components=json.dumps(
                        {
                            "engagement": 40,
                            "adoption": 50,
                            "milestones": 30,
                            "support": 20,
                            "growth": 45,
                        }
                    ),
                ),
            )
        for episode, kind in ((1, "risk_raised"), (1, "risk_escalated")):
            payload = {"kind": kind, "health_score": 35.0, "previous_score": 50.0}
            payload |= {"churn_probability": 0.82, "risk_level": "critical"}
            payload |= {"scored_at": NOW.isoformat()}
            if kind == "risk_escalated":  # as the service writes it: what to do about it
                payload |= {"trigger": "escalation_step", "path_to_healthy": PATH_TO_HEALTHY}
            await b.insert_row(
                conn,
                "alert_outbox",
                b.alert_outbox(bloom, kind=kind, episode=episode, payload=json.dumps(payload)),
            )
    finally:
        await conn.close()
    async with (
        api_login(pg_admin_url, migrated_database) as login_url,
        api_client(await api_config(migrated_database, login_url, pool_size=2)) as (client, app),
    ):
        yield World(migrated_database, client, app, orgs, users, interactions)


async def superuser_fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    return body


# --- who is calling --------------------------------------------------------------------


def forged(user_id: uuid.UUID) -> str:
    """A well-formed token signed with a secret that is not this deployment's."""
    claims = {"sub": str(user_id), "exp": int((NOW + timedelta(minutes=5)).timestamp())}
    return "Bearer " + jwt.encode(claims, "not-the-secret-of-this-deployment-0123", "HS256")


async def test_requests_without_a_valid_token_get_401_problem_json(world: World) -> None:
    admin = world.users["admin"]
    expired = bearer(admin, valid_for=timedelta(minutes=-5))
    # "none" takes no key: PyJWT's annotation has no None, and it reads "" as None
    unsigned = "Bearer " + jwt.encode({"sub": str(admin), "exp": 4102444800}, "", "none")
    no_exp = "Bearer " + jwt.encode({"sub": str(admin)}, JWT_SECRET, algorithm="HS256")
    not_a_user_id = "Bearer " + jwt.encode(
        {"sub": "alice", "exp": 4102444800}, JWT_SECRET, algorithm="HS256"
    )
    unknown_user = bearer(uuid.uuid4())
    # anyone can write a token's header: its alg is quoted back in the challenge
    jose = base64.urlsafe_b64encode(json.dumps({"alg": "HS256\u20ac\\" * 50}).encode())
    odd_alg = "Bearer " + jose.decode().rstrip("=") + ".e30.c2ln"
    cases = {
        "missing": None,
        "basic": "Basic YWxpY2U6c2VjcmV0",
        "garbage": "Bearer not.a.jwt",
        "expired": expired,
        "forged": forged(admin),
        "alg none": unsigned,
        "no exp": no_exp,
        "sub not a uuid": not_a_user_id,
        "unknown user": unknown_user,
        "alg beyond latin-1": odd_alg,
    }
    for case, header in cases.items():
        headers = {} if header is None else {"Authorization": header}
        response = await world.client.get("/api/v1/organizations", headers=headers)
        body = assert_problem(response, 401)
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer "), case
        description = challenge.partition('error_description="')[2].removesuffix('"')
        assert description.isascii() and description.isprintable(), case
        assert '"' not in description and "\\" not in description, case
        assert body["detail"], case
    assert (
        "expired"
        in (await world.client.get("/api/v1/me", headers={"Authorization": expired})).json()[
            "detail"
        ]
    )
    # a token past its exp is refused by the verifier itself, within the leeway too: it
    # was accepted there and refused by the database (its own token lives no longer),
    # and the access log named its subject as the request's user (review 32b, F4)
    lately = bearer(world.users["admin"], valid_for=timedelta(seconds=-10))
    with capture_logs() as logs:
        response = await world.client.get("/api/v1/me", headers={"Authorization": lately})
    assert "expired" in assert_problem(response, 401)["detail"]
    (line,) = [e for e in logs if e["event"] == "api_request"]
    assert line["user_id"] is None and line["token_refused"] == "the token has expired"


async def test_every_request_is_logged_with_the_user_its_token_proved(world: World) -> None:
    """The access log: who asked for what and got which answer, a kept (cached) answer
    too; a refused token is logged without a user; the query's text is not logged;
    probes and scrapes are not logged at all."""
    bloom = world.orgs["bloom"]
    page = f"/api/v1/organizations/{bloom}"
    with capture_logs() as logs:
        for _ in range(2):  # the second answer is the response cache's
            assert (await world.get("admin", page)).status_code == 200
        prefix = str(world.orgs["vow"])[:4]
        listed = await world.get("member", "/api/v1/organizations", q=prefix)
        assert listed.status_code == 200
        refused = await world.client.get(page, headers={"Authorization": "Bearer not.a.jwt"})
        assert refused.status_code == 401
        # well signed, but its subject is no user: refused by the database, no user's
        # request (review 32b, F4: it was logged as that subject's, with a warning that
        # sent on-call to the database)
        stranger = await world.client.get(page, headers={"Authorization": bearer(uuid.uuid4())})
        assert stranger.status_code == 401
        assert (await world.client.get("/api/healthz")).status_code == 200
    lines = [e for e in logs if e["event"] == "api_request"]
    assert [(e["path"], e["status"], e["user_id"]) for e in lines] == [
        (page, 200, str(world.users["admin"])),
        (page, 200, str(world.users["admin"])),
        ("/api/v1/organizations", 200, str(world.users["member"])),
        (page, 401, None),
        (page, 401, None),
    ]
    assert all(e["method"] == "GET" and e["duration_ms"] >= 0 for e in lines)
    assert lines[-2]["token_refused"] == "the bearer token is not a JWT"
    assert lines[-1]["token_refused"] == "the token's subject is not a known user"
    assert not [e for e in logs if e["event"] == "api_audience_unknown"]
    assert not any("?" in e["path"] or "q=" in json.dumps(e) for e in lines)
    assert lines[2]["params"] == ["q"] and prefix not in json.dumps(lines[2])
    assert lines[0]["params"] is None and lines[0]["organization_id"] is None
    # an organization's timeline names it in the query: the audit can tell whose
    # interactions were read (the path alone could not), never what was searched
    with capture_logs() as logs:
        timeline = await world.get(
            "admin", "/api/v1/interactions", organization_id=str(bloom), q="Jane Doe's refund"
        )
        assert timeline.status_code == 200
    (line,) = [e for e in logs if e["event"] == "api_request"]
    assert line["organization_id"] == str(bloom)
    assert line["params"] == ["organization_id", "q"]
    assert "Jane" not in json.dumps(line)

    # and counted by route template and status (the cached answer too)
    registry: CollectorRegistry = world.app.state.metrics.registry

    def requests(route: str, status: str) -> float | None:
        return registry.get_sample_value(
            "healthscore_api_requests_total", {"route": route, "status": status}
        )

    one = "/api/v1/organizations/{organization_id}"
    assert requests(one, "200") == 2 and requests(one, "401") == 2
    assert requests("/api/v1/organizations", "200") == 1
    assert (
        registry.get_sample_value("healthscore_api_request_duration_seconds_count", {"route": one})
        == 4
    )
    assert (await world.client.get("/wp-login.php")).status_code == 404
    assert requests("other", "404") == 1
    assert requests("/api/healthz", "200") is None


async def test_me_says_who_the_token_names_and_their_role(world: World) -> None:
    for role in ("admin", "support", "member"):
        response = await world.get(role, "/api/v1/me")
        assert response.status_code == 200, response.text
        me = response.json()
        assert me["user_id"] == str(world.users[role])
        assert me["role"] == role


# --- the organization list ----------------------------------------------------------------


async def names(world: World, role: str = "admin", **params: Any) -> list[str]:
    response = await world.get(role, "/api/v1/organizations", **params)
    assert response.status_code == 200, response.text
    OrganizationPage.model_validate(response.json())  # the documented contract
    by_id = {str(v): k for k, v in world.orgs.items()}
    return [by_id[item["organization_id"]] for item in response.json()["items"]]


async def test_admin_sees_organizations_most_likely_to_churn_first(world: World) -> None:
    assert await names(world) == ["bloom", "vow", "veil", "petal", "aisle"]
    response = await world.get("admin", "/api/v1/organizations", limit=1)
    first = response.json()["items"][0]
    assert first["organization_name"] == "Bloom Weddings"
    assert first["risk_level"] == "critical" and first["health_status"] == "critical"
    assert first["churn_probability"] == pytest.approx(0.82)
    assert [f["factor"] for f in first["top_risk_factors"]] == [
        "cancellation_request",
        "inactivity",
        "few_logins",
    ]
    assert first["score_change_7d"] == -18 and first["score_change_30d"] == -30


async def test_each_sort_orders_every_row(world: World) -> None:
    assert await names(world, sort="health_score") == ["bloom", "veil", "vow", "petal", "aisle"]
    # biggest drop first, organizations without a 7-day history last
    assert await names(world, sort="score_change_7d") == ["bloom", "veil", "vow", "aisle", "petal"]


async def test_filters_by_band_level_factor_and_id_prefix(world: World) -> None:
    assert await names(world, health_status="critical") == ["bloom"]
    response = await world.client.get(
        "/api/v1/organizations?health_status=at_risk&health_status=good",
        headers=world.auth("admin"),
    )
    assert len(response.json()["items"]) == 3
    assert await names(world, risk_level="medium") == ["veil", "petal"]
    assert await names(world, risk_level="high", sort="health_score") == ["vow"]
    assert await names(world, factor="inactivity") == ["bloom", "vow", "veil"]
    assert await names(world, factor="inactivity", risk_level="low") == []
    prefix = str(world.orgs["petal"])[:6]
    assert "petal" in await names(world, q=prefix)
    assert await names(world, q=str(world.orgs["aisle"])) == ["aisle"]


@pytest.mark.parametrize("sort", ["churn_probability", "health_score", "score_change_7d"])
async def test_cursor_pages_cover_every_row_once(world: World, sort: str) -> None:
    everything = await names(world, sort=sort)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"sort": sort, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await world.get("admin", "/api/v1/organizations", **params)
        page = response.json()
        by_id = {str(v): k for k, v in world.orgs.items()}
        seen += [by_id[i["organization_id"]] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everything


async def test_bad_parameters_and_cursors_are_problems(world: World) -> None:
    for params in (
        {"limit": 0},
        {"limit": 201},
        {"sort": "name"},
        {"health_status": "sad"},
        {"factor": "DROP TABLE"},
        {"q": "xyz"},
    ):
        response = await world.get("admin", "/api/v1/organizations", **params)
        body = assert_problem(response, 422)
        assert body["detail"], params
    cursor = (await world.get("admin", "/api/v1/organizations", limit=1)).json()["next_cursor"]
    wrong_sort = await world.get(
        "admin", "/api/v1/organizations", sort="health_score", cursor=cursor
    )
    assert_problem(wrong_sort, 400)
    assert_problem(await world.get("admin", "/api/v1/organizations", cursor="!!nonsense"), 400)


def cursor_at(sort: str, value: str | None, row: uuid.UUID) -> str:
    """A cursor as a client could write it: base64url JSON [sort, value, id]."""
    raw = json.dumps([sort, value, str(row)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_input_the_database_cannot_take_is_a_problem_not_a_failed_statement(
    world: World,
) -> None:
    # each of these reached a statement (or uuid.UUID) and failed there, a 500
    row = world.orgs["bloom"]
    organizations = "/api/v1/organizations"
    for sort, value in (
        ("churn_probability", "abc"),
        ("churn_probability", "1e999999"),
        ("health_score", "NaN"),
        ("score_change_7d", "-Infinity"),
    ):
        response = await world.get(
            "admin", organizations, sort=sort, cursor=cursor_at(sort, value, row)
        )
        assert assert_problem(response, 400)["type"].endswith("/invalid-cursor"), (sort, value)
    interactions = "/api/v1/interactions"
    for params in (
        {"cursor": cursor_at("newest", "yesterday", row)},
        {"cursor": cursor_at("oldest", "2026-01-01T00:00:00", row)},  # no offset
        {"q": "export", "cursor": cursor_at("relevance", "best", row)},
        {"q": "export", "cursor": cursor_at("relevance", "nan", row)},
        # no time in UTC (the driver failed to bind it), beyond a real's range
        {"cursor": cursor_at("newest", "0001-01-01T00:00:00+14:00", row)},
        {"cursor": cursor_at("oldest", "9999-12-31T23:59:59-14:00", row)},
        {"q": "export", "cursor": cursor_at("relevance", "1e308", row)},
        {"q": "export", "cursor": cursor_at("relevance", "-1e39", row)},
    ):
        assert_problem(await world.get("admin", interactions, **params), 400)
    assert_problem(await world.get("admin", organizations, q="ab\n"), 422)
    assert_problem(await world.get("admin", interactions, q="exp\x00ort"), 422)
    # the cursors the API writes still page (an organization's, an interaction's)
    first = (await world.get("admin", organizations, limit=1)).json()
    second = await world.get("admin", organizations, limit=1, cursor=first["next_cursor"])
    assert second.status_code == 200 and second.json()["items"] != first["items"]
    first = (await world.get("admin", interactions, limit=1)).json()
    second = await world.get("admin", interactions, limit=1, cursor=first["next_cursor"])
    assert second.status_code == 200 and second.json()["items"] != first["items"]


# --- what support staff and members get ----------------------------------------------------


@pytest.mark.parametrize("role", ["support", "member"])
async def test_rows_the_policies_hide_answer_like_missing_ones(world: World, role: str) -> None:
    assert await names(world, role) == []
    bloom = world.orgs["bloom"]
    missing = uuid.uuid4()
    for suffix in ("", "/history", "/milestones"):
        hidden = await world.get(role, f"/api/v1/organizations/{bloom}{suffix}")
        absent = await world.get("admin", f"/api/v1/organizations/{missing}{suffix}")
        hidden_body, absent_body = assert_problem(hidden, 404), assert_problem(absent, 404)
        assert {k: v for k, v in hidden_body.items() if k != "instance"} == {
            k: v for k, v in absent_body.items() if k != "instance"
        }
    acknowledge = f"/api/v1/organizations/{bloom}/milestones/first_client_added/acknowledge"
    assert_problem(await world.post(role, acknowledge), 404)
    reward = f"/api/v1/organizations/{bloom}/milestones/first_client_added/reward"
    assert_problem(await world.post(role, reward, {"outcome": "delivered"}), 404)
    rows = await superuser_fetch(
        world.url,
        "SELECT acknowledged_at, reward_status FROM success_milestones"
        " WHERE organization_id = $1 AND milestone_type = 'first_client_added'",
        bloom,
    )
    assert [tuple(r) for r in rows] == [(None, "pending")]


# --- the organization page ----------------------------------------------------------------


PATH_TO_HEALTHY: Final = [
    {"action": "use the product again", "factor": "inactivity", "impact": 12.5},
    {"action": "reach first_form_submitted", "factor": "missing_milestones", "impact": 3.0},
]


async def test_organization_page_has_everything(world: World) -> None:
    bloom = world.orgs["bloom"]
    response = await world.get("admin", f"/api/v1/organizations/{bloom}")
    assert response.status_code == 200, response.text
    # the statement's JSON is the documented contract, field for field
    OrganizationDetail.model_validate_json(response.content)
    org = response.json()
    assert set(org) == set(OrganizationDetail.model_fields)
    assert set(org["open_interactions"][0]) == set(Interaction.model_fields)
    assert set(org["last_alert"]) == set(LastAlert.model_fields)
    assert set(org["milestones"]) == set(MilestoneCounts.model_fields)
    assert set(org["risk_factors"][0]) == set(RiskFactor.model_fields)
    assert org["organization_name"] == "Bloom Weddings" and org["plan"] == "pro"
    assert org["health_score"] == 35 and org["risk_level"] == "critical"
    assert org["components"] == {
        "engagement": 70,
        "adoption": 65,
        "milestones": 40,
        "support": 90,
        "growth": 55,
    }
    assert [f["factor"] for f in org["risk_factors"]] == [
        "cancellation_request",
        "inactivity",
        "few_logins",
        "shallow_usage",
    ]
    assert org["risk_factors"][0]["detail"] == "A cancellation request is open."
    assert org["feature_usage"] == {"forms": 3, "journeys": 1}
    assert [i["id"] for i in org["open_interactions"]] == [str(world.interactions["overdue"])]
    assert org["open_interactions"][0]["overdue"] is True
    assert org["overdue_follow_ups"] == 1
    # the score's count (customer_health: 3), of which two have rows: one is known from
    # the organization's profile only, with nothing to acknowledge
    assert org["milestones"] == {
        "achieved": 3,
        "acknowledged": 0,
        "unacknowledged": 2,
        "from_profile": 1,
        "rewards_pending": 1,
        "rewards_delivered": 0,
    }
    assert org["last_alert"]["kind"] == "risk_escalated"
    assert org["last_alert"]["risk_level"] == "critical"
    assert org["last_alert"]["published_at"] is None
    # what to do: the alert's path to healthy and why it fired, as the alert said them
    assert org["last_alert"]["trigger"] == "escalation_step"
    assert org["last_alert"]["path_to_healthy"] == PATH_TO_HEALTHY


async def test_rows_ahead_of_the_projection_still_add_up(world: World) -> None:
    # a batch writes its milestone rows with its states; customer_health follows from
    # the projector: until then the page counts the rows, none of them from the profile
    bloom = world.orgs["bloom"]
    conn = await asyncpg.connect(world.url)
    try:
        await conn.execute(
            "UPDATE customer_health SET milestones_achieved = 1 WHERE organization_id = $1", bloom
        )
    finally:
        await conn.close()
    response = await world.get("admin", f"/api/v1/organizations/{bloom}")
    assert response.status_code == 200, response.text
    counts = response.json()["milestones"]
    assert (counts["achieved"], counts["unacknowledged"], counts["from_profile"]) == (2, 2, 0)


async def test_the_page_counts_feature_usage_as_the_projector_stores_it(world: World) -> None:
    # the projector writes each feature as its count and last use (service/projector.py)
    vow = world.orgs["vow"]
    usage = {"forms": {"count": 4, "last_used_at": NOW.isoformat()}, "journeys": 2}
    conn = await asyncpg.connect(world.url)
    try:
        await conn.execute(
            "UPDATE customer_health SET feature_usage = $2::jsonb WHERE organization_id = $1",
            vow,
            json.dumps(usage),
        )
    finally:
        await conn.close()
    response = await world.get("admin", f"/api/v1/organizations/{vow}")
    assert response.status_code == 200, response.text
    OrganizationDetail.model_validate_json(response.content)
    assert response.json()["feature_usage"] == {"forms": 4, "journeys": 2}


async def test_an_overdue_follow_up_of_a_resolved_interaction_is_counted_and_listed(
    world: World,
) -> None:
    """ "Resolve the ticket, then schedule a check-in": the interaction stays resolved
    with a follow-up pending. Once due, the page said "Overdue follow-ups: 0" and did not
    list it, while its interaction list flagged it overdue (review 32b, F2)."""
    vow = world.orgs["vow"]
    conn = await asyncpg.connect(world.url)
    try:
        before = (await world.get("admin", f"/api/v1/organizations/{vow}")).json()
        row = b.support_interaction(
            vow,
            assigned_to=world.users["support"],
            status="resolved",
            subject="Check back after the fix",
            follow_up_required=True,
            follow_up_at=NOW - timedelta(days=3),
            opened_at=NOW - timedelta(days=5),
            resolved_at=NOW - timedelta(days=4),
        )
        await b.insert_row(conn, "support_interactions", row)
    finally:
        await conn.close()
    page = (await world.get("admin", f"/api/v1/organizations/{vow}")).json()
    assert page["overdue_follow_ups"] == before["overdue_follow_ups"] + 1
    listed = {i["id"]: i for i in page["open_interactions"]}
    assert listed[str(row["id"])]["status"] == "resolved"
    assert listed[str(row["id"])]["overdue"] is True
    # the support queue's "overdue follow-ups only" (any status, as the dashboard asks)
    queue = await world.get("support", "/api/v1/interactions", overdue="true", assigned_to="me")
    assert str(row["id"]) in [i["id"] for i in queue.json()["items"]]


async def test_freshness_says_how_far_the_scores_are_behind_the_events(world: World) -> None:
    """The dashboard's "Updated" is when the browser fetched; nothing said how old the
    scores themselves were (review 32b, F7). /freshness: the age of the oldest change
    not yet projected, for any signed-in user (one figure, no organization's)."""
    conn = await asyncpg.connect(world.url)
    try:
        await conn.execute("DELETE FROM read_model_pending")
        current = await world.get("member", "/api/v1/freshness")
        assert current.status_code == 200, current.text
        assert current.json()["read_model_staleness_seconds"] == 0
        # on the database's clock (NOW is this module's import time)
        await conn.execute(
            "INSERT INTO read_model_pending (organization_id, version, queued_at)"
            " VALUES ($1, 1, now() - interval '5 minutes')",
            world.orgs["vow"],
        )
    finally:
        await conn.close()
    behind = (await world.get("admin", "/api/v1/freshness")).json()
    assert 295 <= behind["read_model_staleness_seconds"] <= 600, behind
    assert datetime.fromisoformat(behind["as_of"]) >= NOW
    assert_problem(await world.client.get("/api/v1/freshness"), 401)


async def test_history_is_the_last_score_of_each_day(world: World) -> None:
    bloom = world.orgs["bloom"]
    response = await world.get("admin", f"/api/v1/organizations/{bloom}/history", days=30)
    assert response.status_code == 200, response.text
    OrganizationHistory.model_validate_json(response.content)
    assert set(response.json()) == set(OrganizationHistory.model_fields)
    points = response.json()["points"]
    assert set(points[0]) == set(HistoryPoint.model_fields)
    assert [p["health_score"] for p in points] == [60, 50, 35]
    assert points[0]["components"]["support"] == 20
    assert [p["day"] for p in points] == sorted(p["day"] for p in points)
    two_days = await world.get("admin", f"/api/v1/organizations/{bloom}/history", days=2)
    assert [p["health_score"] for p in two_days.json()["points"]] == [50, 35]
    one_day = await world.get("admin", f"/api/v1/organizations/{bloom}/history", days=1)
    assert [p["health_score"] for p in one_day.json()["points"]] == [35]
    assert_problem(await world.get("admin", f"/api/v1/organizations/{bloom}/history", days=0), 422)


async def test_admin_acknowledges_a_milestone_as_themselves(world: World) -> None:
    bloom = world.orgs["bloom"]
    path = f"/api/v1/organizations/{bloom}/milestones/first_client_added/acknowledge"
    # a body naming someone else is not even read: the database records the caller
    response = await world.client.post(
        path, json={"acknowledged_by": str(world.users["member"])}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    milestone = response.json()
    assert milestone["acknowledged_by"] == str(world.users["admin"])
    assert milestone["acknowledged_by_name"] == "Admin"
    rows = await superuser_fetch(
        world.url,
        "SELECT acknowledged_by, acknowledged_at FROM success_milestones"
        " WHERE organization_id = $1 AND milestone_type = 'first_client_added'",
        bloom,
    )
    assert rows[0]["acknowledged_by"] == world.users["admin"]
    # again: nothing changes, the first acknowledgment stands
    again = await world.post("admin", path)
    assert again.json()["acknowledged_at"] == milestone["acknowledged_at"]
    listing = await world.get("admin", f"/api/v1/organizations/{bloom}/milestones")
    assert {m["milestone_type"]: m["acknowledged_by"] for m in listing.json()["items"]} == {
        "first_client_added": str(world.users["admin"]),
        "clients_10": None,
    }
    assert_problem(
        await world.post(
            "admin", f"/api/v1/organizations/{bloom}/milestones/clients_50/acknowledge"
        ),
        404,
    )
    assert_problem(
        await world.post("admin", f"/api/v1/organizations/{bloom}/milestones/nonsense/acknowledge"),
        422,
    )


async def test_reward_workflow_pending_to_delivered(world: World) -> None:
    bloom = world.orgs["bloom"]
    base = f"/api/v1/organizations/{bloom}/milestones"
    early = await world.post("admin", f"{base}/first_client_added/reward", {"outcome": "delivered"})
    assert assert_problem(early, 409)["type"].endswith("not-acknowledged")
    await world.post("admin", f"{base}/first_client_added/acknowledge")
    delivered = await world.post(
        "admin", f"{base}/first_client_added/reward", {"outcome": "delivered"}
    )
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["reward_status"] == "delivered"
    assert delivered.json()["reward_delivered_at"] is not None
    again = await world.post("admin", f"{base}/first_client_added/reward", {"outcome": "declined"})
    assert assert_problem(again, 409)["type"].endswith("reward-settled")
    await world.post("admin", f"{base}/clients_10/acknowledge")
    no_reward = await world.post("admin", f"{base}/clients_10/reward", {})
    assert assert_problem(no_reward, 409)["type"].endswith("no-reward")
    bad = await world.post(
        "admin",
        f"{base}/first_client_added/reward",
        {"outcome": "declined", "delivered_at": NOW.isoformat()},
    )
    assert_problem(bad, 422)


# --- interactions --------------------------------------------------------------------------


async def interaction_keys(world: World, role: str, **params: Any) -> list[str]:
    response = await world.get(role, "/api/v1/interactions", **params)
    assert response.status_code == 200, response.text
    InteractionPage.model_validate(response.json())
    by_id = {str(v): k for k, v in world.interactions.items()}
    return [by_id[i["id"]] for i in response.json()["items"]]


async def test_score_quality_shows_admins_the_backtest_beside_the_live_alerts(
    world: World,
) -> None:
    """The figures the outcome labeller of `serve` writes (as the service's role), read
    back through the API: admins see them, as they see the scores; nobody else."""
    assert (await world.get("admin", "/api/v1/score-quality")).status_code == 404  # not yet
    # bloom churns 5 days after its raise (the fixture's alert at NOW)
    await superuser_fetch(
        world.url,
        "INSERT INTO churn_labels (organization_id, churned_at, known_until) VALUES ($1, $2, $3)",
        world.orgs["bloom"],
        NOW + timedelta(days=5),
        NOW + timedelta(days=6),
    )
    pool = await asyncpg.create_pool(
        world.url, min_size=1, max_size=1, server_settings={"role": "healthscore_writer"}
    )
    try:
        model = default_model()
        labeller = OutcomeLabeller(pool, Metrics(), "healthscore", ["usage"], model)
        await labeller.step()
    finally:
        await pool.close()
    response = await world.get("admin", "/api/v1/score-quality")
    assert response.status_code == 200, response.text
    shown = ScoreQuality.model_validate(response.json())
    assert shown.score_model_version == model.version
    held_out = (model.evaluation or {})["held_out"]
    assert shown.backtest.roc_auc_30d == held_out["auc_30d_churn_probability"]
    assert shown.backtest.churners_alerted == held_out["recall"]
    assert (
        shown.backtest.false_alerts_per_100_healthy_per_month
        == (held_out["false_alerts_per_100_healthy_per_month"])
    )
    assert shown.backtest.source and shown.backtest.held_out_organizations
    live = shown.live_alerts
    assert (live.episodes_churned, live.episodes_retained, live.episodes_pending) == (1, 0, 0)
    assert live.precision == 1.0
    for role in ("support", "member"):
        refused = await world.get(role, "/api/v1/score-quality")
        assert refused.status_code == 404, role
        assert "admins see them" in refused.json()["detail"]


async def test_support_sees_only_their_interactions_member_none(world: World) -> None:
    assert set(await interaction_keys(world, "support")) == {"overdue", "resolved"}
    assert await interaction_keys(world, "support", status="open", assigned_to="me") == ["overdue"]
    assert await interaction_keys(world, "other_support") == ["other"]
    assert await interaction_keys(world, "member") == []
    assert set(await interaction_keys(world, "admin")) == set(world.interactions)
    # support staff see the interaction, not the organization's name (admins only)
    response = await world.get("support", "/api/v1/interactions", status="open")
    assert response.json()["items"][0]["organization_name"] is None


async def test_interaction_filters_search_and_pages(world: World) -> None:
    assert await interaction_keys(world, "admin", overdue="true") == ["overdue"]
    # false is a filter too (it once meant no filter): every interaction but the overdue one
    assert set(await interaction_keys(world, "admin", overdue="false")) == set(
        world.interactions
    ) - {"overdue"}
    assert await interaction_keys(world, "admin", organization_id=str(world.orgs["vow"])) == [
        "unassigned",
        "other",
    ]
    assert await interaction_keys(world, "admin", status="open", sort="oldest") == [
        "overdue",
        "other",
        "unassigned",
    ]
    found = await interaction_keys(world, "admin", q="export")
    assert set(found) == {"overdue", "unassigned"}
    assert await interaction_keys(world, "admin", q="calendr sync") == ["other"]  # a typo
    assert await interaction_keys(world, "support", q="calendar") == []
    assert await interaction_keys(world, "admin", type="complaint") == []
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await world.get("admin", "/api/v1/interactions", **params)).json()
        by_id = {str(v): k for k, v in world.interactions.items()}
        seen += [by_id[i["id"]] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == await interaction_keys(world, "admin")
    assert_problem(await world.get("admin", "/api/v1/interactions", sort="relevance"), 422)
    assert_problem(await world.get("admin", "/api/v1/interactions", q="ab"), 422)


async def test_a_search_finds_a_subject_whatever_the_form_of_either(world: World) -> None:
    """Trigrams compare code points: "café" typed precomposed (NFC) found nothing sent
    decomposed (NFD) and the other way round. Subjects are stored in NFC (the scoring
    core; migration 0076 for older rows) and the API searches with `q` in NFC."""
    conn = await asyncpg.connect(world.url)
    try:
        row = b.support_interaction(world.orgs["vow"], subject="Th\u00e9 dansant booking")
        await b.insert_row(conn, "support_interactions", row)
    finally:
        await conn.close()
    # decomposed, the accent (not a letter to pg_trgm) splits the word: "the" alone
    # shares too few trigrams with "thé"
    for q in ("th\u00e9", "the\u0301"):  # precomposed, decomposed
        found = await world.get("admin", "/api/v1/interactions", q=q)
        assert [i["id"] for i in found.json()["items"]] == [str(row["id"])], q


# --- identity does not outlive the request ---------------------------------------------------


async def test_pooled_connections_carry_no_identity_between_requests(
    world: World, pg_admin_url: str
) -> None:
    # one connection serves every request in turn; interleave callers on it
    async def visible(role: str) -> int:
        return len((await world.get(role, "/api/v1/organizations")).json()["items"])

    results = await asyncio.gather(*(visible(r) for r in ["admin", "member", "support"] * 6))
    assert results == [5, 0, 0] * 6
    async with api_login(pg_admin_url, world.url) as login_url:
        pool = await create_api_pool(login_url, "cs_dashboard", 1)
        try:
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_user") == "cs_dashboard"
                assert await conn.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
        finally:
            await pool.close()
    # the API's own connections: no identity left after the requests above
    async with world.app.state.api.pool.acquire() as conn:
        assert await conn.fetchval("SELECT app_user_id()") is None
        assert await conn.fetchval("SELECT count(*) FROM customer_health") == 0


async def test_a_failed_request_rolls_its_login_back(world: World) -> None:
    bloom = world.orgs["bloom"]
    bad = await world.post(
        "admin", f"/api/v1/organizations/{bloom}/milestones/clients_10/reward", {}
    )
    assert bad.status_code == 409  # raised inside the bound transaction
    async with world.app.state.api.pool.acquire() as conn:
        assert await conn.fetchval("SELECT app_user_id()") is None
        assert not conn.is_in_transaction()


async def test_health_and_readiness(world: World) -> None:
    assert (await world.client.get("/api/healthz")).status_code == 200
    ready = await world.client.get("/api/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    page = await world.client.get("/")
    assert page.status_code == 200 and "Customer health" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["strict-transport-security"] == "max-age=31536000"
    assert "camera=()" in page.headers["permissions-policy"]
    assert (await world.client.get("/static/app.js")).status_code == 200
    assert (await world.client.get("/api/docs")).status_code == 200
    openapi = (await world.client.get("/api/openapi.json")).json()
    assert "/api/v1/organizations" in openapi["paths"]


async def test_readiness_says_the_database_failed_and_only_the_log_says_how(
    world: World, pg_admin_url: str
) -> None:
    """/api/readyz answered the error's own text to anyone reaching the API port: the
    login's name, a host and its address, a database's name. The log line keeps it."""
    (row,) = await superuser_fetch(
        world.url,
        "SELECT DISTINCT usename FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'healthscore-api'",
    )
    api_login = row["usename"]
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f"ALTER ROLE {api_login} NOLOGIN")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            api_login,
        )
        await world.app.state.api.pool.expire_connections()
        with capture_logs() as logs:
            ready = await world.client.get("/api/readyz")
        assert ready.status_code == 503
        (failed,) = ready.json()["failed"]
        assert failed["check"] == "postgres" and "api_not_ready" in failed["problem"]
        assert api_login not in ready.text, ready.text
        (line,) = [e for e in logs if e["event"] == "api_not_ready"]
        assert api_login in line["error"]  # 'role "t_api_..." is not permitted to log in'
    finally:
        await admin.execute(f"ALTER ROLE {api_login} LOGIN")
        await admin.close()


async def test_readiness_waits_for_the_migrations_its_release_needs(
    migrated_database: str, pg_admin_url: str
) -> None:
    """A new release's API on a database its migrate job has not brought up to date
    answered ready and failed the requests whose functions a migration adds: it stays
    unready, naming what is missing, until the migrations are applied."""
    newest = load_migrations(migrations_path())[-1]
    admin = await asyncpg.connect(migrated_database)
    try:
        # the database as the previous release left it, as far as the history says
        await admin.execute("DELETE FROM schema_migrations WHERE version = $1", newest.version)
        async with (
            api_login(pg_admin_url, migrated_database) as login_url,
            api_client(await api_config(migrated_database, login_url, pool_size=2)) as (
                client,
                _app,
            ),
        ):
            with capture_logs() as logs:
                ready = await client.get("/api/readyz")
            assert ready.status_code == 503, ready.text
            (failed,) = ready.json()["failed"]
            assert failed["check"] == "schema" and newest.file_name in failed["problem"]
            assert [e["first"] for e in logs if e["event"] == "api_schema_missing"] == [
                newest.file_name
            ]
            # before 0115 the role cannot tell which migrations are applied: unready too
            await admin.execute(
                "ALTER FUNCTION app_applied_migrations() RENAME TO app_applied_migrations_gone"
            )
            before = await client.get("/api/readyz")
            assert before.status_code == 503 and "0115 at least" in before.text, before.text
            await admin.execute(
                "ALTER FUNCTION app_applied_migrations_gone() RENAME TO app_applied_migrations"
            )
            # the migrate job runs: ready from the next probe on
            await admin.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                newest.version,
                newest.name,
                newest.checksum,
            )
            assert (await client.get("/api/readyz")).json() == {"status": "ready"}
    finally:
        await admin.close()


async def test_every_page_declares_its_icon(world: World) -> None:
    """A page without an icon link makes the browser fetch /favicon.ico, which the API
    answers 404: a console error on /api/docs the dashboard's page did not have."""
    assert (await world.client.get("/favicon.ico")).status_code == 404
    for path in ("/", "/api/docs"):
        page = await world.client.get(path)
        assert page.status_code == 200
        assert '<link rel="icon" href="data:,">' in page.text, path


# --- failures ------------------------------------------------------------------------


async def test_a_database_refusing_the_api_is_a_503_problem_and_passes(
    world: World, pg_admin_url: str
) -> None:
    """The database gone from under the pool, then refusing new connections: each
    request got a plain-text 500. Now a 503 problem with Retry-After, and the API
    answers again once the database takes connections."""
    (login,) = [
        r["usename"]
        for r in await superuser_fetch(
            pg_admin_url,
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE usename LIKE 't_api_%'",
        )
    ]
    assert (await world.get("admin", "/api/v1/organizations", limit=7)).status_code == 200
    await superuser_fetch(pg_admin_url, f"ALTER ROLE {login} CONNECTION LIMIT 0")
    await superuser_fetch(
        pg_admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        login,
    )  # fmt: skip
    try:
        for limit in (8, 9):  # a connection that was terminated; then none to be had
            body = assert_problem(
                await world.get("admin", "/api/v1/organizations", limit=limit), 503
            )
            assert body["type"].endswith("/unavailable")
    finally:
        await superuser_fetch(pg_admin_url, f"ALTER ROLE {login} CONNECTION LIMIT -1")
    response = await world.get("admin", "/api/v1/organizations", limit=10)
    assert response.status_code == 200, response.text


async def test_a_statement_past_the_statement_timeout_is_a_503_problem_saying_so(
    world: World, pg_admin_url: str
) -> None:
    """One statement of a request may run API_STATEMENT_TIMEOUT_MS at most (a subject
    search matching most interactions costs about its matches, asked by anybody at every
    request): past it the request is a 503 naming the limit, and the next one is
    answered. A lock held on the read model makes the statement wait past it."""
    async with api_login(pg_admin_url, world.url) as login_url:
        config = replace(await api_config(world.url, login_url), statement_timeout_ms=300)
        async with api_client(config) as (client, _app):
            path = "/api/v1/organizations"
            headers = {"Authorization": bearer(world.users["admin"])}
            assert (await client.get(path, headers=headers)).status_code == 200
            locker = await asyncpg.connect(world.url)  # the superuser's
            try:
                async with locker.transaction():
                    await locker.execute("LOCK TABLE customer_health IN ACCESS EXCLUSIVE MODE")
                    with capture_logs() as logs:
                        response = await client.get(path, headers=headers, params={"limit": 3})
                    body = assert_problem(response, 503)
                    assert body["type"].endswith("/too-slow")
                    assert "API_STATEMENT_TIMEOUT_MS" in body["detail"]
                    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
                        "api_statement_timeout"
                    ]
            finally:
                await locker.close()
            response = await client.get(path, headers=headers, params={"limit": 3})
            assert response.status_code == 200, response.text


async def test_an_unexpected_failure_is_a_500_problem_naming_its_log_entry(world: World) -> None:
    async def fails() -> None:
        raise RuntimeError("internal detail that must not reach the caller")

    world.app.add_api_route("/api/fails", fails)
    transport = httpx.ASGITransport(app=world.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        response = await client.get("/api/fails")
    body = assert_problem(response, 500)
    assert "internal detail" not in response.text
    assert len(body["error_id"]) == 32 and body["error_id"] in body["detail"]


async def test_a_request_body_larger_than_any_the_api_takes_is_refused_unread(
    world: World,
) -> None:
    """The one body the API takes (a reward's outcome) is a few dozen bytes, but a route
    reads and parses its whole body before it checks the caller: a 300 MB body sent without
    any credential took the API process to 1.2 GB. A body over MAX_BODY_BYTES is a 413
    problem, declared (Content-Length) or streamed (chunked), before anything reads it."""
    reward = f"/api/v1/organizations/{world.orgs['bloom']}/milestones/first_client_added/reward"
    large = b'{"outcome": "delivered", "pad": "' + b"x" * (2 * MAX_BODY_BYTES) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(large), 1000):
            yield large[start : start + 1000]

    for headers in ({}, world.auth("admin")):
        for content in (large, chunks()):
            response = await world.client.post(
                reward, content=content, headers={"Content-Type": "application/json", **headers}
            )
            assert response.status_code == 413, response.text
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == 413 and problem["type"].endswith("/content-too-large")
            assert "content-security-policy" in response.headers
    # a body the API takes still reaches the route
    taken = await world.post("admin", reward, {"outcome": "declined"})
    assert taken.status_code == 409  # not acknowledged yet: the route read it


async def test_a_method_not_allowed_says_which_are(world: World) -> None:
    """RFC 9110: a 405 names the methods the resource takes (Allow); the problem handler
    dropped the header the framework gave."""
    response = await world.client.delete("/api/v1/organizations", headers=world.auth("admin"))
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["allow"] == "GET"


async def test_head_is_answered_as_get_without_the_body(world: World) -> None:
    """RFC 9110: a general-purpose server supports GET and HEAD. Every route declares
    GET alone, so a HEAD (an uptime monitor's check of /api/healthz) was a 405."""
    org = world.orgs["bloom"]
    for path in (
        "/api/healthz",
        "/api/v1/organizations",
        f"/api/v1/organizations/{org}",
        f"/api/v1/organizations/{org}/history",
        f"/api/v1/organizations/{org}/milestones",
        "/api/v1/interactions",
        "/api/v1/me",
        "/",
    ):
        got = await world.client.get(path, headers=world.auth("admin"))
        head = await world.client.head(path, headers=world.auth("admin"))
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-length"] == str(len(got.content)), path
        assert head.headers.get("etag") == got.headers.get("etag"), path
    # a HEAD the route refuses is refused as its GET is, without a body
    for params in ({}, {"limit": 0}):  # no token; a bad parameter
        got = await world.client.get("/api/v1/organizations", params=params)
        head = await world.client.head("/api/v1/organizations", params=params)
        assert head.status_code == got.status_code >= 400 and head.content == b""
    # a resource without GET still says which methods it takes
    acknowledge = f"/api/v1/organizations/{org}/milestones/first_client_added/acknowledge"
    head = await world.client.head(acknowledge, headers=world.auth("admin"))
    assert head.status_code == 405 and head.headers["allow"] == "POST"


async def test_a_request_with_thousands_of_invalid_values_gets_a_short_problem(
    world: World,
) -> None:
    """Each invalid value was listed, with its message in `detail` too: 2,900 repeats of
    an invalid band (a 64 KiB query string, the server's limit) were answered with 592 kB.
    The problem names the first few and counts the rest."""
    response = await world.get("admin", "/api/v1/organizations", health_status=["sad"] * 2900)
    body = assert_problem(response, 422)
    assert len(body["errors"]) == 10 and body["errors_unlisted"] == 2890
    assert body["detail"].endswith("; and 2890 more")
    assert len(response.content) < 4096
    one = assert_problem(await world.get("admin", "/api/v1/organizations", limit=0), 422)
    assert len(one["errors"]) == 1 and one["errors_unlisted"] == 0


async def test_a_count_in_the_query_string_is_digits_alone(world: World) -> None:
    """`int()` reads "1_0" as 10, and " 10", "+10" and Arabic-Indic digits too: a client
    that sent `limit=1_0` got ten items and no word that its value was odd."""
    org = (await world.get("admin", "/api/v1/organizations", limit=1)).json()["items"][0]
    history = f"/api/v1/organizations/{org['organization_id']}/history"
    for odd in ("1_0", " 10", "10 ", "+10", "\u0661\u0660", "1e1", "10.0"):
        for path, name in (("/api/v1/organizations", "limit"), (history, "days")):
            problem = assert_problem(await world.get("admin", path, **{name: odd}), 422)
            assert [e["location"] for e in problem["errors"]] == [["query", name]], (odd, problem)
            assert "integer" in problem["errors"][0]["message"], (odd, problem)
    assert (await world.get("admin", "/api/v1/organizations", limit="10")).status_code == 200
    assert (await world.get("admin", history, days="007")).status_code == 200


async def test_what_a_client_writes_is_logged_and_quoted_in_bounded_length(
    world: World,
) -> None:
    """A path, and a token header's `alg`, are anybody's to write (64 KiB, the server's
    limit): the access log line, the 404's `instance` and the 401 quoted them whole, log
    lines that container log drivers split (at 16 KiB) into pieces no longer parsed as
    JSON, and a 404 as large as its request."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": "A" * 40_000}).encode())
    token = header.decode().rstrip("=") + ".e30.c2ln"
    with capture_logs() as logs:
        long_path = await world.client.get("/api/v1/" + "x" * 60_000)
        refused = await world.client.get(
            "/api/v1/organizations", headers={"Authorization": f"Bearer {token}"}
        )
    # the 404's problem document quotes the path as the log line does, not 60 kB back
    assert assert_problem(long_path, 404)["instance"].endswith("(+59708 characters)")
    assert len(long_path.content) < 1024
    assert assert_problem(refused, 401)["detail"].startswith("tokens signed with 'AAAA")
    assert len(refused.content) < 1024
    lines = [e for e in logs if e["event"] == "api_request"]
    assert len(lines) == 2
    assert all(len(json.dumps(e)) < 1024 for e in lines), [len(json.dumps(e)) for e in lines]
    assert lines[0]["path"].startswith("/api/v1/xxx") and "+59708 characters" in lines[0]["path"]


async def test_no_answer_about_people_is_left_for_a_cache_to_store(
    world: World, pg_admin_url: str
) -> None:
    """An answer names people (a user's email and name, who acknowledged what) or what a
    person may see. Only the answers the response cache keeps said how a cache may keep
    them (private, revalidated by ETag); every other one said nothing, so a browser
    kept it on disk as it liked, still there for the next person at a shared desk once
    the first signed out: a write's answer (the acknowledgment naming its author), a
    refusal, and every answer of an API run without the cache (API_RESPONSE_CACHE_ENTRIES
    =0), /me included. Those are no-store now."""
    milestone = f"/api/v1/organizations/{world.orgs['bloom']}/milestones/first_client_added"
    kept = await world.get("admin", "/api/v1/me")
    assert kept.status_code == 200
    # a kept answer too (review 32b, F6: it was private, no-cache, which a browser may
    # store on disk)
    assert kept.headers["cache-control"] == "private, no-store"
    written = await world.post("admin", f"{milestone}/acknowledge")
    assert written.status_code == 200 and written.json()["acknowledged_by"]
    refused = await world.client.get("/api/v1/me")
    hidden = await world.get("member", f"/api/v1/organizations/{world.orgs['bloom']}")
    assert (refused.status_code, hidden.status_code) == (401, 404)
    for answer in (written, refused, hidden):
        assert answer.headers.get("cache-control") == "no-store", answer.request.url
    async with (
        api_login(pg_admin_url, world.url) as login_url,
        api_client(
            replace(await api_config(world.url, login_url, pool_size=2), cache_entries=0)
        ) as (uncached, _),
    ):
        for path in ("/api/v1/me", "/api/v1/organizations", milestone.rpartition("/")[0]):
            answer = await uncached.get(path, headers=world.auth("admin"))
            assert answer.status_code == 200, path
            assert answer.headers.get("cache-control") == "no-store", path
