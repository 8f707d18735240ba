"""`healthscore export-organization`: a subject-access request answered from what the
service holds, through the real service, broker and PostgreSQL.

An organization's events (usage, support with a subject naming a person, a record
refused into the dead-letter outbox) are consumed by the running service; its profile
row is written as the product writes it. The command, a real child process as the
administrator's login, prints every row of it, its state decoded (the user ids inside
the MessagePack), its dead letters; nothing of another organization; a login that
row-level security restricts is refused rather than given a partial answer.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import dead_letter_columns
from healthscore.store import sql
from healthscore.store import subject_access as q
from tests.integration.test_erase_organization import _send, _support
from tests.utils.api import with_user
from tests.utils.harness import (
    erase_now,
    make_topics,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_caught_up


async def _export(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MIGRATION_DATABASE_URL"}
    env["DATABASE_URL"] = database_url
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "healthscore.cli", "export-organization", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_every_table_that_keys_rows_to_an_organization_is_exported(
    migrated_database: str,
) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        tables = {r[0] for r in await conn.fetch(q.TABLES_OF_ORGANIZATIONS)}
    finally:
        await conn.close()
    # organizations keys it by `id`; every other table by organization_id
    assert tables | {"organizations"} == set(q.ORGANIZATION_TABLES)


async def test_an_organizations_data_exported_whole_and_nobody_elses(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    inputs = [topics.usage, topics.support]
    async with running_service(settings):
        await _send(kafka_bootstrap, topics, org, 3)  # and a record refused, keyed by it
        await _send(kafka_bootstrap, topics, other, 2)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(
            "INSERT INTO user_profiles (id, organization_id, email, full_name, role)"
            " VALUES ($1, $2, 'jane@example.com', 'Jane Doe', 'member')",
            uuid.uuid4(),
            uuid.UUID(org),
        )
        # refused records pending (the relay ran with the service: the ones it refused
        # are on their topic by now): one without a key, naming it in its value only,
        # one keyed by another spelling of its id, and one of the other organization
        value = orjson.dumps(_support(org.upper(), datetime.now(UTC)))
        await conn.execute(
            sql.INSERT_DEAD_LETTERS,
            *dead_letter_columns(
                [
                    Rejection(RawRecord(topics.support, 0, 900, None, value), "missing_key", "-"),
                    Rejection(
                        RawRecord(topics.support, 0, 901, ("{" + org.upper() + "}").encode(), b"{"),
                        "invalid_key",
                        "-",
                    ),
                    Rejection(
                        RawRecord(topics.support, 0, 902, other.encode(), b"{"), "invalid_json", "-"
                    ),
                    # the other organization's record, merely mentioning this one: its own
                    Rejection(
                        RawRecord(topics.support, 0, 903, other.encode(), value),
                        "key_mismatch",
                        "-",
                    ),
                    # without a key, the other organization's, mentioning this one
                    Rejection(
                        RawRecord(
                            topics.support,
                            0,
                            904,
                            None,
                            orjson.dumps({**_support(other, datetime.now(UTC)), "note": org}),
                        ),
                        "missing_key",
                        "-",
                    ),
                ]
            ),
        )
    finally:
        await conn.close()

    out = tmp_path / "export.json"
    out.write_text("an earlier file, readable by all")
    out.chmod(0o644)
    done = await _export(migrated_database, org, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"organization {org}:" in done.stderr and "support_interactions 3" in done.stderr
    assert out.stat().st_mode & 0o777 == 0o600  # personal data
    document: dict[str, Any] = orjson.loads(out.read_bytes())
    tables = document["tables"]
    assert document["organization_id"] == org and not document["erased"]
    for name in (
        "organizations",
        "organization_state",
        "customer_health",
        "health_score_history",
        "support_interactions",
        "processed_events",
        "user_profiles",
    ):
        assert tables[name], name
    assert {row["subject"] for row in tables["support_interactions"]} == {
        "Jane Doe (jane@example.com) cannot log in"
    }
    assert [p["email"] for p in tables["user_profiles"]] == ["jane@example.com"]
    assert len(tables["processed_events"]) == 6  # three usage and three support events
    # the state decoded: the product's user ids inside it, not MessagePack
    assert "state_msgpack" not in tables["organization_state"][0]
    assert document["state"]["organization_id"] == org and document["state"]["users"]
    # its dead letters: the one keyed by it and the one naming it in its value
    dead = document["dead_letters"]["dead_letter_outbox"]
    assert [row["source_offset"] for row in dead] == [900, 901], dead
    # the other organization's record naming it: counted, not handed over
    assert document["dead_letters_of_other_organizations_naming_it"] == 2
    # nothing of the other organization anywhere in the answer
    assert other not in out.read_text()
    # a link left at the name is not followed
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    refused = await _export(migrated_database, org, "--out", str(link))
    assert refused.returncode == 2 and "link.json" in refused.stderr, refused.stderr
    assert not (tmp_path / "elsewhere.json").exists()
    assert document["kept_elsewhere"]

    # erased: only the erasure's own records are left to show
    await erase_now(migrated_database, uuid.UUID(org))
    after = await _export(migrated_database, org)
    assert after.returncode == 0, after.stderr
    erased = orjson.loads(after.stdout)
    assert erased["erased"] and "erased: only the erasure's records are left" in after.stderr
    # the tombstone, and its feed tombstone still owed (erased here without a broker)
    left = {name for name, rows in erased["tables"].items() if rows}
    assert "erased_organizations" in left
    assert left <= {"erased_organizations", "health_feed_tombstones_owed"}, left
    assert erased["state"] is None and not any(erased["dead_letters"].values())


async def test_a_login_row_level_security_restricts_is_refused(migrated_database: str) -> None:
    login = f"t_sar_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(migrated_database)
    try:
        await admin.execute(f"CREATE ROLE {login} LOGIN IN ROLE healthscore_writer")
    finally:
        await admin.close()
    try:
        url = with_user(migrated_database, login)
        refused = await _export(url, str(uuid.uuid4()))
        assert refused.returncode == 2
        assert "reads past row-level security" in refused.stderr, refused.stderr
        assert refused.stdout == ""
    finally:
        admin = await asyncpg.connect(migrated_database)
        try:
            await admin.execute(f"DROP ROLE {login}")
        finally:
            await admin.close()
