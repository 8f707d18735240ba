"""The health feed's tombstone of an erased organization when the erasure cannot publish
it: `healthscore erase` finds the broker refusing it (here: nothing listening where it
looks), while `serve` reaches a broker that accepts. The feed must not keep the erased
organization's last score until someone runs the erasure again: the tombstone is owed
(`health_feed_tombstones_owed`) and the running service publishes it.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from healthscore_lab.devservices import free_port
from tests.integration.test_erase_organization import (
    _erase,
    _eraser_login,
    _health_feed_of,
    _send,
)
from tests.utils.harness import ServiceProcess, fetchval, make_topics, service_settings
from tests.utils.scenarios import wait_caught_up


async def test_a_tombstone_the_erasure_could_not_publish_is_published_by_the_service(
    migrated_database: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    inputs = [topics.usage, topics.support]
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    service = ServiceProcess(settings)
    service.start(str(tmp_path / "serve.log"))
    try:
        await _send(kafka_bootstrap, topics, org, 3, bad=False)
        await _send(kafka_bootstrap, topics, other, 3, bad=False)
        await wait_caught_up(migrated_database, kafka_bootstrap, settings.consumer_group, inputs)
        for _ in range(200):
            feed = await _health_feed_of(kafka_bootstrap, topics.health, org)
            if feed and feed[-1] is not None:
                break
            await asyncio.sleep(0.1)
        assert feed and feed[-1] is not None

        refusing = f"127.0.0.1:{free_port()}"
        async with _eraser_login(migrated_database) as (eraser_url, _login):
            done = await _erase(eraser_url, refusing, topics, "--organization", org, "--yes")
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "removed" in done.stdout, done.stdout
        assert "the running service publishes them" in done.stderr, done.stderr

        # the service, whose broker accepts, publishes the tombstone itself
        for _ in range(300):
            owed = await fetchval(
                migrated_database, "SELECT count(*) FROM health_feed_tombstones_owed"
            )
            if owed == 0:
                break
            await asyncio.sleep(0.1)
        assert owed == 0
        feed = await _health_feed_of(kafka_bootstrap, topics.health, org)
        assert feed[-1:] == [None], feed[-3:]
        # the other organization's feed is untouched
        assert (await _health_feed_of(kafka_bootstrap, topics.health, other))[-1] is not None
    finally:
        service.terminate()
    assert "health_feed_tombstones_published" in (tmp_path / "serve.log").read_text()
