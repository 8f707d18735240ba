"""Full garbage collections go on when no records come.

`serve` switches the collector's automatic full collection off and runs one between
batches, paced by records (service/gctuning.py). With no records (a quiet night, no
partitions assigned, a consumer out of its group) none ran, while the background loops
kept making cyclic garbage: a soak measured +21.6 MB of it (tracemalloc) in nine
minutes of a consumer without partitions (docs/bench/twenty-sixth-2026-12-06/soak/).
The `full_collection` loop runs one when none has for a while. Real PostgreSQL and
broker, the service in-process.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from healthscore.service.app import ServiceOptions
from tests.utils.harness import make_topics, running_service, service_settings


class _Garbage:
    def __init__(self) -> None:
        self.me = self  # a cycle: only a collection frees it


@pytest.fixture
def tuned_collector() -> Iterator[None]:
    """The collector as `serve` sets it (gctuning): no automatic full collection."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 1_000_000)
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def test_a_process_without_records_still_collects_old_garbage(
    migrated_database: str, kafka_bootstrap: str, tuned_collector: None
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    options = ServiceOptions(
        run_sweep=False,
        create_topics=False,
        full_gc_every_batches=3,
        full_gc_max_interval_seconds=0.5,
    )
    async with running_service(settings, options) as service:
        garbage = _Garbage()
        freed = weakref.ref(garbage)
        gc.collect(1)  # it survives into the oldest generation, as a batch's leftovers do
        del garbage
        for _ in range(60):  # no record is produced: no batch paces a collection
            if freed() is None:
                break
            await asyncio.sleep(0.1)
        assert freed() is None, "old garbage outlived 6 s without records"
        assert service.collections.timed_collections >= 1
        assert service.collections.collections == service.collections.timed_collections
