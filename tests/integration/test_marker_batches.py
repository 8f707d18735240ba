"""A batch that holds nothing but transaction markers is reported like any other.

Such a batch commits a transaction that moves the stored offset past the markers (a
stand-in, `RawRecord.skipped_to`), and nothing else. It used to be left out of the
batch log and the metrics (its record count is 0), so the on-call engineer saw a
partition's stored offset move with no `batch_committed` line saying so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from tests.integration.test_hostile_records import _org, _total, _usage
from tests.utils.harness import (
    fetchval,
    make_producer,
    make_topics,
    running_service,
    service_settings,
    wait_for,
)
from tests.utils.raw_batches import produce_batch, transaction_marker
from tests.utils.scenarios import stored_offsets, wait_processed


async def test_a_batch_of_markers_alone_is_logged_with_the_offsets_it_passed(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    settings = service_settings(migrated_database, kafka_bootstrap, topics)
    at = datetime.now(UTC) - timedelta(hours=1)
    org = _org("markers-alone")
    producer = await make_producer(kafka_bootstrap)
    try:
        async with running_service(settings) as service:
            for n in range(2):
                body = orjson.dumps(_usage(org, n, at))
                await producer.send_and_wait(topics.usage, body, key=org.encode(), partition=0)
            await wait_processed(migrated_database, 2, exactly=True)
            # the records' batch is committed: the markers come in a fetch of their own
            await produce_batch(kafka_bootstrap, topics.usage, 0, transaction_marker())
            await produce_batch(kafka_bootstrap, topics.usage, 0, transaction_marker(commit=False))
            await wait_for(
                migrated_database,
                "SELECT next_offset FROM consumer_offsets WHERE topic = $1 AND partition = 0",
                lambda v: v == 4,
                30.0,
                topics.usage,
            )
            outcomes = list(service.outcomes)
            sized = _total(service, "healthscore_batch_size_records_count")
    finally:
        await producer.stop()
    passed = [o for o in outcomes if o.passed_over]
    assert passed, [(o.records, o.next_offsets) for o in outcomes]
    assert all(o.records == 0 and o.applied == 0 for o in passed)
    assert max(o.next_offsets[(topics.usage, 0)] for o in passed) == 4
    assert sum(o.records for o in outcomes) == 2  # the records, not the markers
    # nor does the batch-size histogram (or the durations HealthscoreBatchSlow reads)
    assert sized == sum(1 for o in outcomes if o.records)
    assert await fetchval(migrated_database, "SELECT count(*) FROM processed_events") == 2
    assert await stored_offsets(migrated_database, settings.consumer_group) == {
        (topics.usage, 0): 4
    }
