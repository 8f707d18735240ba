"""`healthscore dead-letters` reads what the service rejected from the real broker: the
running service dead-letters hostile records, the command prints each one's reason,
detail, source coordinates, key and value, with the producer's bytes escaped (no
terminal escape sequence, line break or bidirectional override reaches the screen),
and says how many more a --limit left out."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from healthscore.cli import main
from tests.utils.harness import (
    consume_all,
    make_producer,
    make_topics,
    running_service,
    service_settings,
)


async def test_dead_letters_prints_each_rejection_escaped(
    migrated_database: str,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    organization = str(uuid.uuid4())
    hostile = [
        # not JSON, and a terminal escape sequence that would clear the screen
        b"\x1b[2J\x1b[31mnot json\x1b[0m",
        # JSON whose field hides a right-to-left override and a line break, and a byte
        # that is not UTF-8
        b'{"event_id": "\xe2\x80\xae evil\\n", "bad": "\xff"}',
    ]
    async with running_service(settings):
        producer = await make_producer(kafka_bootstrap)
        try:
            for value in hostile:
                await producer.send_and_wait(topics.usage, value, key=organization.encode())
        finally:
            await producer.stop()
        await consume_all(kafka_bootstrap, topics.dlq_usage, expect=2, timeout=60)

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("USAGE_TOPIC", topics.usage)
    monkeypatch.setenv("SUPPORT_TOPIC", topics.support)
    monkeypatch.setenv("PROFILE_TOPIC", f"never-created.{uuid.uuid4().hex[:8]}")
    capsys.readouterr()

    code = await asyncio.to_thread(main, ["dead-letters", "--topic", "usage", "--limit", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"{topics.dlq_usage}: 1 dead letter(s) from the start"
    assert lines[1].startswith(f"{topics.dlq_usage} 0:0  reason invalid_json  rejected at 20")
    assert lines[2].startswith("  detail: not valid JSON")
    assert lines[3].startswith(f"  source: {topics.usage} partition 0 offset 0 (record timestamp ")
    assert lines[4] == f"  key:    {organization}"
    assert lines[5] == "  value:  \\x1b[2J\\x1b[31mnot json\\x1b[0m"
    assert lines[-1] == f"{topics.dlq_usage}: 1 more after these (--limit 1 shown)", out

    code = await asyncio.to_thread(main, ["dead-letters"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{topics.dlq_usage}: 2 dead letter(s) from the start" in out
    assert '  value:  {"event_id": "\\u202e evil\\\\n", "bad": "\\xff"}' in out.splitlines(), out
    assert f"{topics.dlq_usage} 0:1  reason " in out
    assert f"  source: {topics.usage} partition 0 offset 1" in out
    assert f"{topics.dlq_support}: no dead letters" in out
    assert "(nothing was dead-lettered there yet)" in out  # the profile topic's
    # nothing of the producer's bytes reaches the terminal as it was
    assert "\x1b" not in out and "\u202e" not in out and "\ufffd" not in out


async def test_dead_letters_shows_the_newest_and_filters_by_reason_and_source(
    migrated_database: str,
    kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In an incident the oldest dead letters are likely fixed already, and a spike is
    one reason among others: the newest, one reason's, one source record's. Five records
    over two partitions: three not JSON (offsets 0-2 of partition 0), then two whose
    key is no organization id, one on each partition."""
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    organization = str(uuid.uuid4())
    async with running_service(settings):
        producer = await make_producer(kafka_bootstrap)
        try:
            for n in range(3):
                await producer.send_and_wait(
                    topics.usage, f"not json {n}".encode(), key=organization.encode(), partition=0
                )
                await asyncio.sleep(0.05)  # rejected at distinct times
            for partition in (0, 1):
                await asyncio.sleep(0.05)
                await producer.send_and_wait(
                    topics.usage, b"{}", key=f"not-an-id-{partition}".encode(), partition=partition
                )
        finally:
            await producer.stop()
        await consume_all(kafka_bootstrap, topics.dlq_usage, expect=5, timeout=60)

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("USAGE_TOPIC", topics.usage)
    capsys.readouterr()

    async def run(*options: str) -> list[str]:
        code = await asyncio.to_thread(main, ["dead-letters", "--topic", "usage", *options])
        out = capsys.readouterr()
        assert code == 0, out
        return out.out.splitlines()

    def sources(lines: list[str]) -> list[tuple[int, int]]:
        found = [line.split(" partition ")[1].split() for line in lines if "  source: " in line]
        return [(int(part[0]), int(part[2])) for part in found]

    def reasons(lines: list[str]) -> list[str]:
        return [line.split("  reason ")[1].split()[0] for line in lines if "  reason " in line]

    newest = await run("--newest", "--limit", "2")
    assert newest[0] == f"{topics.dlq_usage}: 2 dead letter(s) the newest, oldest first"
    assert reasons(newest) == ["invalid_key", "invalid_key"]
    assert newest[-1] == f"{topics.dlq_usage}: 3 more before these (--limit 2 shown)"

    not_json = await run("--reason", "invalid_json", "--limit", "2")
    assert reasons(not_json) == ["invalid_json", "invalid_json"]
    assert sources(not_json) == [(0, 0), (0, 1)]  # the first two from the start
    assert not_json[-1] == (
        f"{topics.dlq_usage}: 1 more (reason invalid_json) after these (--limit 2 shown)"
    )
    latest_not_json = await run("--reason", "invalid_json", "--newest", "--limit", "1")
    assert sources(latest_not_json) == [(0, 2)]

    one = await run("--source-partition", "1", "--source-offset", "0")
    assert reasons(one) == ["invalid_key"] and sources(one) == [(1, 0)]
    assert "more" not in one[-1]

    code = await asyncio.to_thread(main, ["dead-letters", "--reason", "invalid_jsn"])
    err = capsys.readouterr().err
    assert code == 2 and "no dead letter has the reason invalid_jsn" in err, err
