"""`healthscore erase` against a running `serve` process, the real broker and PostgreSQL.

The organization is erased while its events keep arriving, then gets more events, the
service restarts and gets more again: no table holds a row of it afterwards, its later
records are skipped (not dead-lettered: the dead-letter topic would copy them), the
health feed ends on a tombstone record for its key, and a replay into an empty
database that knows the erasure does not bring it back. The erasure runs as a login
that is only a member of healthscore_eraser, as the runbook says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from healthscore.store import erasure
from tests.conftest import DatabaseFactory
from tests.integration import test_api
from tests.utils.api import with_user
from tests.utils.harness import (
    ServiceProcess,
    Topics,
    consume_all,
    erase_now,
    fetch,
    fetchval,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import produce_stream, simulated_stream, wait_caught_up

world = test_api.world  # the read API over a few organizations, with its cache


def _usage(org: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "user_id": str(uuid.uuid4()),
        "type": "login",
        "occurred_at": at.isoformat(),
        "quantity": 1,
    }


def _support(org: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "interaction_id": str(uuid.uuid4()),
        "action": "opened",
        "interaction_type": "complaint",
        "channel": "email",
        "priority": "high",
        "sentiment": "negative",
        "assigned_to": None,
        "subject": "Jane Doe (jane@example.com) cannot log in",
        "occurred_at": at.isoformat(),
    }


async def _send(bootstrap: str, topics: Topics, org: str, count: int, bad: bool = True) -> None:
    """`count` usage and support events of `org`, and a malformed record keyed by it."""
    producer = await make_producer(bootstrap)
    now = datetime.now(UTC) - timedelta(minutes=1)
    try:
        for index in range(count):
            at = now - timedelta(seconds=count - index)
            for topic, body in (
                (topics.usage, _usage(org, at)),
                (topics.support, _support(org, at)),
            ):
                await producer.send_and_wait(topic, orjson.dumps(body), key=org.encode())
        if bad:
            # a dead letter: valid JSON of the organization, an unknown event type
            body = {**_usage(org, now), "type": "no-such-type", "note": "jane@example.com"}
            await producer.send_and_wait(topics.usage, orjson.dumps(body), key=org.encode())
    finally:
        await producer.stop()


async def _rows_of(database_url: str, org: str) -> dict[str, int]:
    """Every row of `org` in every table (its id in an organization_id column, its
    `organizations` row, its dead letters by key), per table; only those with rows. The
    erasure's own records (the tombstone, its owed feed tombstone) hold the id only."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            """SELECT c.table_name FROM information_schema.columns c
               JOIN information_schema.tables t USING (table_schema, table_name)
               WHERE c.table_schema = 'public' AND c.column_name = 'organization_id'
                 AND t.table_type = 'BASE TABLE'
                 AND c.table_name NOT IN ('erased_organizations', 'health_feed_tombstones_owed')
               ORDER BY 1"""
        )
        counts: dict[str, int] = {}
        for row in tables:
            name = row["table_name"]  # from the catalog, not input
            counts[name] = await conn.fetchval(
                f"SELECT count(*) FROM {name} WHERE organization_id = $1", uuid.UUID(org)
            )
        counts["organizations"] = await conn.fetchval(
            "SELECT count(*) FROM organizations WHERE id = $1", uuid.UUID(org)
        )
        for name in ("dead_letter_outbox", "dead_letters_withheld"):
            counts[name] = await conn.fetchval(
                f"SELECT count(*) FROM {name} WHERE record_key = $1 "
                "OR position($1 IN coalesce(record_value, ''::bytea)) > 0",
                org.encode(),
            )
    finally:
        await conn.close()
    return {name: count for name, count in counts.items() if count}


@contextlib.asynccontextmanager
async def _eraser_login(database_url: str) -> Any:
    """A LOGIN role that is a member of healthscore_eraser and nothing else: its URL."""
    login = f"t_eraser_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE healthscore_eraser")
    finally:
        await admin.close()
    try:
        yield with_user(database_url, login), login
    finally:
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f"DROP ROLE {login}")
        finally:
            await admin.close()


async def _erase(
    database_url: str, bootstrap: str, topics: Topics, *args: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("MIGRATION_DATABASE_URL", None)
    env.update(
        {
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_IDEMPOTENT_PRODUCER": "false",
            "HEALTH_TOPIC": topics.health,
        }
    )
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "erase", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _health_feed_of(bootstrap: str, topic: str, org: str) -> list[bytes | None]:
    records = await consume_all(bootstrap, topic, timeout=8.0, done=lambda _: False)
    return [r.value for r in records if r.key == org.encode()]


async def _dead_letters_of(bootstrap: str, topics: Topics, org: str) -> int:
    records = await consume_all(bootstrap, topics.dlq_usage, timeout=4.0, done=lambda _: False)
    return sum(1 for r in records if r.key == org.encode())


async def test_erase_while_serve_runs_and_events_keep_arriving(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    inputs = [topics.usage, topics.support]
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    stream = simulated_stream(organizations=6, events=300, seed=2424)
    others = {m.organization_id for m in stream if m.organization_id}
    org = str(uuid.uuid4())
    service = ServiceProcess(settings)
    service.start(str(tmp_path / "serve.log"))
    try:
        await produce_stream(kafka_bootstrap, topics, stream)
        await _send(kafka_bootstrap, topics, org, 5)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        before = await _rows_of(migrated_database, org)
        for table in (
            "organizations",
            "organization_state",
            "customer_health",
            "support_interactions",
            "health_score_history",
            "processed_events",
        ):
            assert before.get(table), (table, before)
        assert (await _health_feed_of(kafka_bootstrap, topics.health, org))[-1] is not None

        async with _eraser_login(migrated_database) as (eraser_url, login):
            dry = await _erase(eraser_url, kafka_bootstrap, topics, "--organization", org)
            assert dry.returncode == 0, dry.stderr
            assert "would remove" in dry.stdout and "dry run" in dry.stdout, dry.stdout
            assert "support_interactions" in dry.stdout, dry.stdout
            assert await _rows_of(migrated_database, org) == before

            # its events keep arriving while it is erased: the consumer holds its state
            sending = asyncio.create_task(_send(kafka_bootstrap, topics, org, 40))
            await asyncio.sleep(0.3)
            done = await _erase(eraser_url, kafka_bootstrap, topics, "--organization", org, "--yes")
            await sending
            assert done.returncode == 0, done.stderr
            assert "removed" in done.stdout and "1 organization(s) erased" in done.stdout
            again = await _erase(
                eraser_url, kafka_bootstrap, topics, "--organization", org, "--yes"
            )
            assert again.returncode == 0, again.stderr
            assert "erased before" in again.stdout, again.stdout

        # dead letters of it published before the erasure stay in their topic (documented)
        dead_before = await _dead_letters_of(kafka_bootstrap, topics, org)
        await _send(kafka_bootstrap, topics, org, 5)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        assert await _rows_of(migrated_database, org) == {}
        service.terminate()
        service.start(str(tmp_path / "serve.log"))
        await _send(kafka_bootstrap, topics, org, 5)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        assert await _rows_of(migrated_database, org) == {}
    finally:
        service.terminate()

    audit = await fetch(
        migrated_database,
        "SELECT erased_by, rows_removed FROM erased_organizations WHERE organization_id = $1",
        uuid.UUID(org),
    )
    assert [r["erased_by"] for r in audit] == [login]
    removed = orjson.loads(audit[0]["rows_removed"])
    assert removed["support_interactions"] >= 5 and removed["organizations"] == 1
    # the organizations around it untouched
    assert await fetchval(
        migrated_database, "SELECT count(*) FROM organization_state WHERE state_msgpack IS NOT NULL"
    ) == len(others)
    # `healthscore state` says it was erased, not that it was never seen
    shown = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "state", org],
        env={**os.environ, "DATABASE_URL": migrated_database},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 1 and "was erased" in shown.stderr, shown.stderr
    # the compacted feed ends on its tombstone
    feed = await _health_feed_of(kafka_bootstrap, topics.health, org)
    assert feed and feed[-1] is None, feed[-3:]
    # its later records were skipped and logged, never dead-lettered
    log = (tmp_path / "serve.log").read_text()
    assert "erased_organization_events_skipped" in log
    assert await _dead_letters_of(kafka_bootstrap, topics, org) == dead_before


async def test_replay_into_an_empty_database_keeps_the_organization_erased(
    migrated_database: str,
    kafka_bootstrap: str,
    database_factory: DatabaseFactory,
    migrated_template: str,
) -> None:
    from healthscore.service.replay import replay

    topics = await make_topics(kafka_bootstrap, partitions=2)
    stream = simulated_stream(organizations=4, events=200, seed=2425)
    org = str(uuid.uuid4())
    await produce_stream(kafka_bootstrap, topics, stream)
    await _send(kafka_bootstrap, topics, org, 5, bad=False)
    replay_db = await database_factory(template=migrated_template)
    # the runbook: the old database's erasures first (`erase --list`), then the replay
    done = await _erase(replay_db, kafka_bootstrap, topics, "--organization", org, "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed 0 row(s)" in done.stdout, done.stdout
    result = await replay(service_settings(replay_db, kafka_bootstrap, topics), timeout=120.0)
    assert result is not None
    assert await _rows_of(replay_db, org) == {}
    assert await fetchval(replay_db, "SELECT count(*) FROM organization_state") == len(
        {m.organization_id for m in stream if m.organization_id}
    )


async def test_an_erasure_committed_while_a_batch_waits_for_its_offsets(
    migrated_database: str,
) -> None:
    """A batch that claimed its events while an erasure held the offsets (its statement's
    snapshot from before the tombstone) finds the organization erased when it saves: a
    held state whose row is gone, and a new organization's first state. Both are skipped;
    the batch neither fails nor brings them back."""
    from healthscore.core.scoring.model import default_model
    from healthscore.service.ingest.decode import Decoder, RawRecord
    from healthscore.service.ingest.pipeline import BatchPipeline
    from healthscore.store.db import create_pool

    usage, support = "usage.erase", "support.erase"
    held, new, kept = (str(uuid.uuid4()) for _ in range(3))
    offsets: dict[str, int] = {}
    at = datetime.now(UTC) - timedelta(hours=2)

    def record(topic: str, body: dict[str, Any]) -> RawRecord:
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        key = str(body["organization_id"]).encode()
        return RawRecord(topic, 0, offset, key, orjson.dumps(body), 0)

    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=2)
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        pipeline = BatchPipeline(
            pool=pool,
            decoder=Decoder(usage, support, 64 * 1024),
            model=default_model(),
            consumer_group="erase",
            rescore_step_seconds=6 * 3600,
            owned_states=100,
        )
        first = await pipeline.process(
            [record(usage, _usage(org, at)) for org in (held, kept)]
            + [record(support, _support(held, at))]
        )
        assert first.states_read == 2 and not first.erased_by_topic
        later = at + timedelta(minutes=5)
        second = [
            record(usage, _usage(held, later)),
            record(support, _support(held, later)),
            record(usage, _usage(new, later)),
            record(support, _support(new, later)),
            record(usage, _usage(kept, later)),
        ]
        erasing = eraser.transaction()
        await erasing.start()
        await eraser.execute(erasure.LOCK_CONSUMERS)
        for org in (held, new):  # as the erasure does: recorded, then deleted (0121)
            await eraser.fetchval(erasure.RECORD_TOMBSTONE, uuid.UUID(org), "{}")
            await eraser.execute(erasure.DELETE_ORGANIZATION, uuid.UUID(org))
        batch = asyncio.create_task(pipeline.process(second))
        await asyncio.sleep(0.5)
        assert not batch.done()  # waiting for the offsets the erasure holds
        await erasing.commit()
        outcome = await asyncio.wait_for(batch, 30)
    finally:
        await eraser.close()
        await pool.close()
    assert outcome.erased_by_topic == {usage: 2, support: 2}
    assert sorted(outcome.erased_organizations) == sorted([held, new])
    assert outcome.applied == 1
    # the ids the batch claimed for them were given back: only the first batch's remain,
    # for the erasure's second step
    assert await _rows_of(migrated_database, held) == {"processed_events": 2}
    assert await _rows_of(migrated_database, new) == {}
    eraser = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_eraser"}
    )
    try:
        await eraser.execute(erasure.DELETE_PROCESSED_EVENTS, [uuid.UUID(held)])
    finally:
        await eraser.close()
    assert await _rows_of(migrated_database, held) == {}
    assert (await _rows_of(migrated_database, kept))["processed_events"] == 2


async def test_the_read_api_stops_showing_it_at_once(world: Any) -> None:
    """The API's kept answers (its cache) of the organization's page, history and
    interactions and of the lists go the moment the erasure commits: the cascade's
    deletes announce themselves like any write (migration 0050's triggers)."""
    from tests.integration.test_api_cache import LIST, hits_without_statements, settle

    vow = world.orgs["vow"]
    paths = [f"/api/v1/organizations/{vow}{suffix}" for suffix in ("", "/history", "/milestones")]
    for path in paths:
        await world.get("admin", path)
        await hits_without_statements(world, "admin", path)  # kept
    listed = (await world.get("admin", LIST)).json()["items"]
    assert str(vow) in {i["organization_id"] for i in listed}
    queue = (await world.get("support", "/api/v1/interactions")).json()["items"]

    result = await erase_now(world.url, vow)
    assert result.first and result.rows["customer_health"] == 1
    await settle(world)

    for path in paths:
        assert (await world.get("admin", path)).status_code == 404, path
    listed = (await world.get("admin", LIST)).json()["items"]
    assert str(vow) not in {i["organization_id"] for i in listed}
    after = (await world.get("support", "/api/v1/interactions")).json()["items"]
    assert all(i.get("organization_id") != str(vow) for i in after)
    assert len(after) <= len(queue)


async def test_an_import_naming_an_erased_organization_skips_it(migrated_database: str) -> None:
    """A CRM export still listing an erased organization: its profile and label are not
    applied (they would bring its rows back), the others' are, and the import goes on."""
    from healthscore.service.imports import ChurnLabel, Profile, apply_profiles, import_labels

    gone, kept = uuid.uuid4(), uuid.uuid4()
    await erase_now(migrated_database, gone)
    created = (datetime.now(UTC) - timedelta(days=400)).timestamp()
    writer = await asyncpg.connect(
        migrated_database, server_settings={"role": "healthscore_writer"}
    )
    try:
        profiles = [
            Profile(org, created, {"first_client_added": created + 86400}) for org in (gone, kept)
        ]
        assert (
            await apply_profiles(
                writer, sorted(profiles, key=lambda p: p.organization_id), 6 * 3600
            )
            == 1
        )
        labels = [ChurnLabel(org, None) for org in sorted((gone, kept))]
        await import_labels(writer, labels, datetime.now(UTC))
    finally:
        await writer.close()
    assert await _rows_of(migrated_database, str(gone)) == {}
    assert set(await _rows_of(migrated_database, str(kept))) >= {
        "organization_state",
        "churn_labels",
    }


async def test_erase_across_two_replicas_and_a_rebalance(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two `serve` replicas share the partitions (and hold their organizations'
    states); the organization is erased while its events arrive, one replica stops right
    after (its partitions move to the other, which never held that state), and more
    events come: nothing of it is written again on either."""
    topics = await make_topics(kafka_bootstrap, partitions=4)
    inputs = [topics.usage, topics.support]
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    orgs = [str(uuid.uuid4()) for _ in range(6)]
    gone = orgs[0]
    replicas = [ServiceProcess(settings) for _ in range(2)]
    for index, replica in enumerate(replicas):
        replica.start(str(tmp_path / f"serve-{index}.log"))
    try:
        for org in orgs:
            await _send(kafka_bootstrap, topics, org, 3, bad=False)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        assert (await _rows_of(migrated_database, gone)).get("organization_state") == 1
        sending = asyncio.gather(*(_send(kafka_bootstrap, topics, org, 20) for org in orgs))
        done = await _erase(
            migrated_database, kafka_bootstrap, topics, "--organization", gone, "--yes"
        )
        assert done.returncode == 0, done.stderr
        replicas[0].terminate()  # a rebalance: the other replica takes its partitions
        await sending
        for org in orgs:
            await _send(kafka_bootstrap, topics, org, 3)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        assert await _rows_of(migrated_database, gone) == {}
        for org in orgs[1:]:
            assert (await _rows_of(migrated_database, org)).get("processed_events") == 2 * (
                3 + 20 + 3
            )
    finally:
        for replica in replicas:
            replica.terminate()


async def test_late_records_of_an_erased_organization_without_its_key_are_not_dead_lettered(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    """A late record of an erased organization that its key does not name (no key, a key
    that is no id, another organization's key) is rejected by the decoder; the dead-letter
    topic would copy its payload, the erased organization's personal data among it. It is
    skipped as the erased organization's instead, by the id in its value, as the erasure
    finds its dead letters; the other organization's valid record beside it is applied."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    erased, other = str(uuid.uuid4()), str(uuid.uuid4())
    inputs = [topics.usage, topics.support]
    async with running_service(settings):
        await _send(kafka_bootstrap, topics, erased, 2, bad=False)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        assert (await erase_now(migrated_database, uuid.UUID(erased))).first
        now = datetime.now(UTC) - timedelta(seconds=30)
        late = _support(erased, now)  # "Jane Doe (jane@example.com) cannot log in"
        producer = await make_producer(kafka_bootstrap)
        try:
            for key in (None, b"not-an-id", other.encode(), erased.upper().encode()):
                await producer.send_and_wait(topics.support, orjson.dumps(late), key=key)
            # and a value the decoder cannot read at all, the id inside it
            await producer.send_and_wait(
                topics.usage, b'{"organization_id": "' + erased.upper().encode() + b'", "x": ['
            )
            await producer.send_and_wait(
                topics.usage, orjson.dumps(_usage(other, now)), key=other.encode()
            )
        finally:
            await producer.stop()
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
    dead = [
        r
        for topic in (topics.dlq_usage, topics.dlq_support)
        for r in await consume_all(kafka_bootstrap, topic, timeout=3.0, done=lambda _: False)
    ]
    assert dead == [], [(r.topic, r.key, r.value[:80]) for r in dead]
    assert await _rows_of(migrated_database, erased) == {}
    assert (
        await fetchval(
            migrated_database,
            "SELECT count(*) FROM processed_events WHERE organization_id = $1",
            uuid.UUID(other),
        )
        == 1
    )
