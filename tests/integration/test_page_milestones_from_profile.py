"""The organization page counts the milestones the score counts, those known from a CRM
profile included, and says how many of them have no row to acknowledge.

Through the real service (broker, consumers, projector), `healthscore import`'s
`apply_profiles`, PostgreSQL and the read API as cs_dashboard: one organization's
milestones come from its events, then from a profile on `organization.profile.v1`
(one of them dated earlier than the stream crossed it), then from its events again;
another's from an import before its first event. The page's `achieved` is the count
of the state, of `customer_health.milestones_achieved` and of the missing_milestones
factor; `from_profile` those without a `success_milestones` row, so that achieved =
acknowledged + unacknowledged + from_profile.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from healthscore.api.models import OrganizationDetail
from healthscore.service.imports import Profile, apply_profiles
from tests.integration.test_api import superuser_fetch
from tests.utils import schema_builders as b
from tests.utils.api import api_client, api_config, api_login, bearer
from tests.utils.harness import (
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_caught_up
from tests.utils.states import stored_states


def org(name: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"page-milestones-{name}")


STREAMED, IMPORTED = org("streamed"), org("imported")
NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(days=30)
LONG_AGO = NOW - timedelta(days=600)  # every milestone is expected by now


def usage(organization: uuid.UUID, kind: str, day: int) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid5(organization, f"{kind}-{day}")),
        "organization_id": str(organization),
        "user_id": str(uuid.uuid5(organization, "user")),
        "type": kind,
        "occurred_at": (START + timedelta(days=day)).isoformat(),
    }


async def test_the_page_counts_milestones_from_profiles_and_says_they_have_no_row(
    migrated_database: str, kafka_bootstrap: str, pg_admin_url: str
) -> None:
    db = migrated_database
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(db, kafka_bootstrap, topics)
    inputs = [topics.usage, topics.support, topics.profile]
    producer = await make_producer(kafka_bootstrap)
    conn = await asyncpg.connect(db)
    try:
        async with running_service(settings):
            # IMPORTED: the CRM file first (`healthscore import --profiles`), then its events
            imported_at = (LONG_AGO + timedelta(days=10)).timestamp()
            profile = Profile(
                IMPORTED,
                LONG_AGO.timestamp(),
                {
                    "team_member_invited": imported_at,
                    "subscription_upgraded": imported_at,
                    "first_payment_received": imported_at,
                },
            )
            assert await apply_profiles(conn, [profile], 86400.0) == 1
            await produce_json(
                producer,
                topics.usage,
                [
                    usage(IMPORTED, "login", 1),
                    usage(IMPORTED, "team_member_invited", 2),  # known: no row
                    usage(IMPORTED, "journey_launched", 3),  # a row
                ],
            )
            # STREAMED: three rows from its events
            await produce_json(
                producer,
                topics.usage,
                [
                    usage(STREAMED, "login", 1),
                    usage(STREAMED, "onboarding_completed", 2),
                    usage(STREAMED, "client_added", 3),
                    usage(STREAMED, "form_created", 4),
                ],
            )
            await wait_caught_up(db, kafka_bootstrap, settings.consumer_group, inputs)
            # then its CRM profile: two milestones the stream never saw, and one it crossed
            # that the CRM dates earlier (it keeps its row)
            crm = {
                "event_id": str(uuid.uuid5(STREAMED, "crm")),
                "organization_id": str(STREAMED),
                "created_at": LONG_AGO.isoformat(),
                "milestones": {
                    "first_client_added": (LONG_AGO + timedelta(days=20)).isoformat(),
                    "profile_completed": (LONG_AGO + timedelta(days=5)).isoformat(),
                    "integration_connected": (LONG_AGO + timedelta(days=40)).isoformat(),
                },
                "occurred_at": (START + timedelta(days=10)).isoformat(),
            }
            await produce_json(producer, topics.profile, [crm])
            await wait_caught_up(db, kafka_bootstrap, settings.consumer_group, inputs)
            # then events again: one of a milestone the profile gave (no row), one new
            await produce_json(
                producer,
                topics.usage,
                [usage(STREAMED, "profile_completed", 12), usage(STREAMED, "email_sent", 13)],
            )
            await wait_caught_up(db, kafka_bootstrap, settings.consumer_group, inputs)
        states = await stored_states(conn)
        admin = b.user_profile(role="admin")
        await b.insert_row(conn, "user_profiles", admin)
    finally:
        await conn.close()
        await producer.stop()

    # what the stream recorded: rows only for milestones its events crossed first
    rows = await superuser_fetch(
        db,
        "SELECT organization_id, milestone_type, reward_status FROM success_milestones",
    )
    recorded = {
        o: {r["milestone_type"] for r in rows if r["organization_id"] == o}
        for o in (STREAMED, IMPORTED)
    }
    assert recorded == {
        STREAMED: {
            "onboarding_completed",
            "first_client_added",
            "first_form_created",
            "first_email_sent",
        },
        IMPORTED: {"first_journey_launched"},
    }
    expected = {STREAMED: (6, 4, 2), IMPORTED: (4, 1, 3)}  # achieved, rows, from the profile

    async with (
        api_login(pg_admin_url, db) as login_url,
        api_client(await api_config(db, login_url, pool_size=1)) as (client, _app),
    ):
        headers = {"Authorization": bearer(admin["id"])}
        for organization, (achieved, with_rows, from_profile) in expected.items():
            response = await client.get(f"/api/v1/organizations/{organization}", headers=headers)
            assert response.status_code == 200, response.text
            page = OrganizationDetail.model_validate_json(response.content)
            assert len(states[str(organization)].milestones) == achieved
            health = await superuser_fetch(
                db,
                "SELECT milestones_achieved, risk_factors::text AS factors FROM customer_health"
                " WHERE organization_id = $1",
                organization,
            )
            assert health[0]["milestones_achieved"] == achieved
            # the page's count is the score's: the factor says the rest of the 17 are missing
            missing = [
                f for f in orjson.loads(health[0]["factors"]) if f["factor"] == "missing_milestones"
            ]
            assert missing[0]["value"] == 17 - achieved
            assert [f.value for f in page.risk_factors if f.factor == "missing_milestones"] == [
                17 - achieved
            ]
            pending = sum(
                1
                for r in rows
                if r["organization_id"] == organization and r["reward_status"] == "pending"
            )
            assert response.json()["milestones"] == {
                "achieved": achieved,
                "acknowledged": 0,
                "unacknowledged": with_rows,
                "from_profile": from_profile,
                "rewards_pending": pending,
                "rewards_delivered": 0,
            }

        # acknowledging a row moves it from unacknowledged to acknowledged; a milestone
        # known from the profile only has no row to acknowledge
        base = f"/api/v1/organizations/{STREAMED}/milestones"
        done = await client.post(f"{base}/first_client_added/acknowledge", headers=headers)
        assert done.status_code == 200, done.text
        absent = await client.post(f"{base}/profile_completed/acknowledge", headers=headers)
        assert absent.status_code == 404, absent.text
        listing = await client.get(base, headers=headers)
        assert len(listing.json()["items"]) == 4
        page_after = await client.get(f"/api/v1/organizations/{STREAMED}", headers=headers)
        counts = page_after.json()["milestones"]
        assert (counts["achieved"], counts["acknowledged"], counts["unacknowledged"]) == (6, 1, 3)
        assert counts["from_profile"] == 2
