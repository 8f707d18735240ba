"""Logs: one canonical line per batch, one per rejection, no personal data, no secrets."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from healthscore.config import Settings
from healthscore.errors import MigrationError
from healthscore.store.db import create_pool
from healthscore.store.dburl import redact
from healthscore.store.migrate import apply_migrations
from tests.utils.harness import (
    make_producer,
    make_topics,
    produce_json,
    running_service,
    service_settings,
    wait_for,
)
from tests.utils.scenarios import wait_processed

SUBJECT = "Jane Doe's wedding on June 3rd, call +44 7700 900123"


async def test_batch_and_rejection_lines_carry_coordinates_but_no_personal_data(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    org = str(uuid.uuid4())
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    opened = {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "interaction_id": str(uuid.uuid4()),
        "action": "opened",
        "interaction_type": "complaint",
        "channel": "email",
        "subject": SUBJECT,
        "occurred_at": at,
    }
    too_long = dict(opened, event_id=str(uuid.uuid4()), subject=SUBJECT * 20)
    producer = await make_producer(kafka_bootstrap)
    try:
        with capture_logs() as logs:
            async with running_service(settings):
                await produce_json(producer, topics.support, [opened, too_long])
                await wait_processed(migrated_database, 1, exactly=True)
                await wait_for(migrated_database, "SELECT 1", lambda n: n == 1)
    finally:
        await producer.stop()

    batches = [e for e in logs if e["event"] == "batch_committed"]
    assert batches, logs
    line = batches[-1]
    for key in (
        "records",
        "applied",
        "duplicates",
        "rejected",
        "organizations_rescored",
        "alerts",
        "offsets_from",
        "offsets",
        "duration_ms",
    ):
        assert key in line, key
    assert line["offsets_from"] == {f"{topics.support}:0": 0}
    assert line["offsets"] == {f"{topics.support}:0": 2}  # the next offset to read
    rejected = [e for e in logs if e["event"] == "message_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "out_of_range"
    assert rejected[0]["topic"] == topics.support
    assert rejected[0]["offset"] == 1 and rejected[0]["partition"] == 0
    # which organization (the message key as sent): the dead letter need not be fetched
    assert rejected[0]["key"] == org, rejected[0]
    assert "subject" in rejected[0]["detail"]
    # the subject (personal data) never reaches the logs
    assert not any("Jane Doe" in str(entry) for entry in logs)


async def test_the_database_password_never_appears_in_errors_or_settings() -> None:
    secret = "s3cr3t-pa55word"
    url = f"postgresql://healthscore:{secret}@127.0.0.1:1/healthscore"
    settings = Settings.model_construct(database_url=SecretStr(url))
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    assert secret not in redact(url)
    with pytest.raises((OSError, asyncpg.PostgresError)) as failure:
        await create_pool(url, "healthscore_writer")
    assert secret not in str(failure.value) and secret not in repr(failure.value)


@pytest.mark.parametrize(
    "url",
    [
        # libpq and asyncpg take the password (and a client key's) as query parameters too
        "postgresql://healthscore@127.0.0.1:1/healthscore?password={secret}",
        "postgresql://healthscore@127.0.0.1:1/healthscore?sslmode=require&PASSWORD={secret}",
        "postgresql://healthscore:x@127.0.0.1:1/db?sslpassword={secret}&application_name=a",
    ],
)
async def test_a_password_in_the_query_string_is_redacted_too(url: str) -> None:
    secret = "s3cr3t-pa55word"
    url = url.format(secret=secret)
    assert secret not in redact(url)
    assert redact(url).startswith("postgresql://healthscore")
    with pytest.raises(MigrationError) as failure:
        await apply_migrations(url)
    assert secret not in str(failure.value), failure.value


async def test_a_superuser_login_is_flagged_and_a_dedicated_login_is_not(
    migrated_database: str,
) -> None:
    from urllib.parse import urlsplit, urlunsplit

    with capture_logs() as logs:
        pool = await create_pool(migrated_database, "healthscore_writer")
        await pool.close()
    assert [e["event"] for e in logs] == ["database_login_is_superuser"]

    login = f"t_service_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(migrated_database)
    try:
        # identifiers cannot be bound; generated here, never input
        await conn.execute(f"CREATE ROLE {login} LOGIN IN ROLE healthscore_writer")
    finally:
        await conn.close()
    try:
        parts = urlsplit(migrated_database)
        host = parts.netloc.split("@", 1)[1]
        url = urlunsplit((parts.scheme, f"{login}@{host}", parts.path, parts.query, ""))
        with capture_logs() as logs:
            pool = await create_pool(url, "healthscore_writer")
            async with pool.acquire() as session:
                assert await session.fetchval("SELECT session_user") == login
            await pool.close()
        assert logs == []
    finally:
        conn = await asyncpg.connect(migrated_database)
        try:
            await conn.execute(f"DROP ROLE {login}")
        finally:
            await conn.close()


async def test_fields_the_contract_does_not_name_are_counted_and_named_once(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A producer's misspelled `qty` (for `quantity`) was ignored in silence: the event
    applied with quantity 1. It is still applied (the contract ignores unknown fields:
    a newer producer's field must break nothing), counted, and named in the log the
    first time this process sees it on the topic."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    org = str(uuid.uuid4())
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    def body(**extra: object) -> dict[str, object]:
        return {
            "event_id": str(uuid.uuid4()),
            "organization_id": org,
            "type": "client_added",
            "occurred_at": at,
            **extra,
        }

    # a harmless extra field in every record, and, well past the first 20 of them, one
    # record with a misspelled quantity: a batch's samples were the first 20 records
    # with any unknown field, so the misspelling was never named
    bodies = [body(trace_id=f"t{n}") for n in range(30)]
    bodies.append(body(trace_id="t30", qty=5))
    producer = await make_producer(kafka_bootstrap)
    try:
        with capture_logs() as logs:
            async with running_service(settings) as service:
                await produce_json(producer, topics.usage, bodies)
                await wait_processed(migrated_database, len(bodies), exactly=True)
                await wait_for(migrated_database, "SELECT 1", lambda n: n == 1)
                counted = service.metrics.registry.get_sample_value(
                    "healthscore_events_with_unknown_fields_total", {"topic": topics.usage}
                )
    finally:
        await producer.stop()
    assert counted == len(bodies)
    named = [e for e in logs if e["event"] == "unknown_fields"]
    # each name once, when first seen, with a record that carried it
    assert [(e["topic"], e["fields"]) for e in named] == [
        (topics.usage, ["trace_id"]),
        (topics.usage, ["qty"]),
    ], named
    assert named[0]["offset"] == 0 and named[1]["offset"] == 30
