"""A dead letter its topic refuses for its content alone does not hold the topic's
later dead letters: a stand-in goes in its place, the record stays in PostgreSQL.

A real tansu broker enforces a JSON schema on the usage dead-letter topic (values must
be JSON objects, as a platform team may require of every topic): the dead letter of a
record that is not JSON is refused for its bytes, whatever is tried again, while the
dead letters around it are JSON and taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from structlog.testing import capture_logs

from healthscore.cli import main
from healthscore.service.app import ServiceOptions
from tests.utils.harness import (
    Topics,
    broker_refusing,
    consume_all,
    fetch,
    make_producer,
    running_service,
    service_settings,
)
from tests.utils.scenarios import wait_caught_up


def _usage(org: str, n: int, at: datetime, **changes: Any) -> bytes:
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"withheld-usage-{org}-{n}")),
        "organization_id": org,
        "type": "feature_used",
        "feature": "calendar",
        "occurred_at": (at + timedelta(seconds=n)).isoformat(),
    }
    body.update(changes)
    return orjson.dumps(body)


def _metric(service: Any, name: str, **labels: str) -> float:
    return float(
        sum(
            sample.value
            for family in service.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


@contextlib.asynccontextmanager
async def _refusing_dead_letter_broker(
    tmp_path: Path, suffix: str
) -> AsyncIterator[tuple[Topics, str]]:
    """A real broker whose usage dead-letter topic takes only JSON objects (a record that
    is not JSON makes a dead letter it refuses, while any JSON description of it is
    taken), with the test's topics (named with `suffix`) created; stopped at the end."""
    topics = Topics(*(f"{name}.{suffix}" for name in ("u", "s", "a", "h", "p")))
    schema = {"type": "object", "properties": {"value": {"type": "object"}}}
    others = [topics.usage, topics.support, topics.alerts, topics.health, topics.profile]
    others += [topics.dlq_support, topics.dlq_profile]
    async with broker_refusing(
        tmp_path / "schemas", topics.dlq_usage, others, 1, schema=schema
    ) as bootstrap:
        yield topics, bootstrap


async def test_a_dead_letter_its_topic_refuses_for_its_content_holds_no_later_one(
    migrated_database: str, tmp_path: Path
) -> None:
    """Before, the relay kept the refused dead letter first in its topic's order and
    tried it again every few seconds for good: the dead letters rejected after it, which
    the topic takes, never left (`healthscore_dead_letters_pending` only grew)."""
    async with _refusing_dead_letter_broker(tmp_path, "withheld") as (topics, bootstrap):
        settings = service_settings(migrated_database, bootstrap, topics)
        at = datetime.now(UTC) - timedelta(hours=1)
        org = str(uuid.uuid5(uuid.NAMESPACE_URL, "withheld-org"))
        not_json = b"<usage><feature>calendar</feature></usage>"  # a producer sending XML
        producer = await make_producer(bootstrap)
        try:
            sent = []
            for value in (
                _usage(org, 0, at, quantity=0),  # rejected, its dead letter JSON: taken
                not_json,  # rejected, its dead letter refused for its bytes
                _usage(org, 1, at),  # valid
                _usage(org, 2, at, quantity=-5),  # rejected after the refused one
            ):
                sent.append(
                    await producer.send_and_wait(
                        topics.usage, value, key=org.encode(), headers=[("trace", b"t-1")]
                    )
                )
            with capture_logs() as logs:
                async with running_service(settings, ServiceOptions(run_sweep=False)) as service:
                    await wait_caught_up(
                        migrated_database, bootstrap, settings.consumer_group, [topics.usage]
                    )
                    letters = await consume_all(bootstrap, topics.dlq_usage, expect=3, timeout=30)
                    for _ in range(100):
                        if not await fetch(migrated_database, "SELECT 1 FROM dead_letter_outbox"):
                            break
                        await asyncio.sleep(0.1)
                    pending = await fetch(
                        migrated_database,
                        "SELECT source_offset, last_error FROM dead_letter_outbox",
                    )
                    withheld = _metric(
                        service, "healthscore_dead_letters_withheld_total", topic=topics.usage
                    )
                    # the rows kept for an operator, as the gauges' next refresh counts them
                    for _ in range(150):
                        kept_rows = _metric(service, "healthscore_dead_letters_withheld_kept")
                        if kept_rows == 1:
                            break
                        await asyncio.sleep(0.1)
                    published = _metric(
                        service, "healthscore_dead_letters_published_total", topic=topics.usage
                    )
        finally:
            await producer.stop()

    assert pending == [], f"dead letters still waiting: {pending}"
    # all three in their order of rejection: the stand-in in the refused one's place
    offsets = [dict(letter.headers)["x-source-offset"] for letter in letters]
    assert offsets == [str(sent[i].offset).encode() for i in (0, 1, 3)]
    first, stand_in, third = letters
    assert first.value == _usage(org, 0, at, quantity=0)
    assert third.value == _usage(org, 2, at, quantity=-5)
    named = dict(stand_in.headers)
    assert named["x-error-reason"] == b"invalid_json"
    assert named["x-source-topic"] == topics.usage.encode()
    assert named["x-value-withheld"].startswith(b"UnknownError")
    assert "trace" not in named  # the producer's headers stay with the record
    description = orjson.loads(stand_in.value)
    assert description["source_offset"] == sent[1].offset
    assert description["value_bytes"] == len(not_json)
    assert "dead_letters_withheld" in description["withheld"]
    # the record as it came, in PostgreSQL
    [kept] = await fetch(
        migrated_database,
        "SELECT source_topic, source_offset, record_key, record_value, record_headers,"
        " reason, refusal FROM dead_letters_withheld",
    )
    assert (kept["source_topic"], kept["source_offset"]) == (topics.usage, sent[1].offset)
    assert bytes(kept["record_value"]) == not_json
    assert bytes(kept["record_key"]) == org.encode()
    assert msgspec.msgpack.decode(kept["record_headers"]) == [["trace", b"t-1"]]
    assert kept["reason"] == "invalid_json"
    assert kept["refusal"].startswith("UnknownError")
    # counted and said
    assert withheld == 1 and published == 3
    assert kept_rows == 1  # the gauge the DBA watches the table by
    [said] = [log for log in logs if log["event"] == "dead_letter_withheld"]
    assert said["source"] == f"{topics.usage}:0:{sent[1].offset}"
    assert said["topic"] == topics.dlq_usage and said["reason"] == "invalid_json"


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


async def test_the_dead_letters_command_says_a_stand_in_is_not_the_record(
    migrated_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before, `healthscore dead-letters` printed a stand-in's JSON description on the
    `value:` line, as the record's value (and its `x-value-withheld` and `content-type`
    among the producer's headers): an operator following the re-drive runbook from it
    would send the description to the source topic, and nothing said that the record
    is in PostgreSQL."""
    async with _refusing_dead_letter_broker(tmp_path, "standin") as (topics, bootstrap):
        settings = service_settings(migrated_database, bootstrap, topics)
        org = str(uuid.uuid5(uuid.NAMESPACE_URL, "standin-org"))
        not_json = b"<usage><feature>calendar</feature></usage>"
        producer = await make_producer(bootstrap)
        try:
            sent = await producer.send_and_wait(
                topics.usage, not_json, key=org.encode(), headers=[("trace", b"t-1")]
            )
            async with running_service(settings, ServiceOptions(run_sweep=False)):
                await consume_all(bootstrap, topics.dlq_usage, expect=1, timeout=30)
        finally:
            await producer.stop()

        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        monkeypatch.setenv("USAGE_TOPIC", topics.usage)
        monkeypatch.setenv("SUPPORT_TOPIC", topics.support)
        monkeypatch.setenv("PROFILE_TOPIC", topics.profile)
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["dead-letters", "--topic", "usage"])
        out = capsys.readouterr().out

    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"{topics.dlq_usage}: 1 dead letter(s) from the start"
    [value] = [line for line in lines if line.startswith("  value:")]
    # not the description as if it were the record's value: what it is, and where
    assert value.startswith("  value:  (withheld: a stand-in, not the record;"), out
    assert "UnknownError" in value, out
    assert "dead_letters_withheld" in value, out
    assert f"source_offset = {sent.offset}" in value, out
    # ours, not the producer's: not listed as a header it sent
    assert not [line for line in lines if line.startswith("  header ")], out
    # the description is still there to read, named as such
    [stand_in] = [line for line in lines if line.startswith("  stand-in:")]
    assert '"value_bytes":42' in stand_in, out


async def test_a_record_withheld_at_the_coordinates_of_an_earlier_one_is_kept(
    migrated_database: str, tmp_path: Path
) -> None:
    """A recreated input topic (docs/operations.md, "Recovering from a recreated topic")
    numbers its records from 0 again. Before, the second record withheld at the
    coordinates of an earlier one was deleted from dead_letter_outbox and not kept
    (ON CONFLICT DO NOTHING on its coordinates): its stand-in said the record was in
    PostgreSQL, and the row there held the other record."""
    org = str(uuid.uuid5(uuid.NAMESPACE_URL, "withheld-again-org"))
    records = (b"<usage>the first</usage>", b"<usage>the second, after the recreate</usage>")
    async with _refusing_dead_letter_broker(tmp_path, "again") as (topics, bootstrap):
        settings = service_settings(migrated_database, bootstrap, topics)
        for n, value in enumerate(records):
            if n:
                # the input topic deleted and created again, the service's offsets reset
                # as the runbook does (--to-earliest: no row)
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                await admin.start()
                try:
                    await admin.delete_topics([topics.usage])
                    for _ in range(100):
                        try:
                            await admin.create_topics([NewTopic(topics.usage, 1, 1)])
                            break
                        except Exception:
                            await asyncio.sleep(0.2)
                finally:
                    await admin.close()
                conn = await asyncpg.connect(migrated_database)
                try:
                    await conn.execute("DELETE FROM consumer_offsets")
                finally:
                    await conn.close()
            producer = await make_producer(bootstrap)
            try:
                sent = await producer.send_and_wait(topics.usage, value, key=org.encode())
            finally:
                await producer.stop()
            assert sent.offset == 0
            async with running_service(settings, ServiceOptions(run_sweep=False)):
                await consume_all(bootstrap, topics.dlq_usage, expect=n + 1, timeout=30)
                for _ in range(100):
                    if not await fetch(migrated_database, "SELECT 1 FROM dead_letter_outbox"):
                        break
                    await asyncio.sleep(0.1)

    kept = await fetch(
        migrated_database,
        "SELECT source_offset, record_value FROM dead_letters_withheld ORDER BY id",
    )
    assert [bytes(row["record_value"]) for row in kept] == list(records)
