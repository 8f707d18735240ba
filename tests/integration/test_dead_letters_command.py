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
