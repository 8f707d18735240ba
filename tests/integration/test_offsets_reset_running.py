"""`healthscore offsets-reset --yes` applied while the service is consuming (the runbook
allows "restart it right after"): the running consumer must follow the new stored
offsets, not write its own over them, and apply no event twice."""

from __future__ import annotations

import uuid

from tests.integration.test_offsets_reset import _cli_env, _reset
from tests.utils.harness import make_topics, running_service, service_settings
from tests.utils.scenarios import (
    expected_event_counts,
    produce_stream,
    simulated_stream,
    stored_offsets,
    wait_caught_up,
)
from tests.utils.states import event_counts_in


async def test_reset_to_earliest_under_a_running_consumer_applies_nothing_twice(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=2)
    inputs = [topics.usage, topics.support]
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = service_settings(migrated_database, kafka_bootstrap, topics, group=group)
    first = simulated_stream(organizations=20, events=600, seed=505)
    second = simulated_stream(organizations=20, events=600, seed=606)
    env = _cli_env(migrated_database, kafka_bootstrap, topics)
    async with running_service(settings):
        await produce_stream(kafka_bootstrap, topics, first)
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
        applied = await _reset(env, "--group", group, "--to-earliest", "--yes")
        assert applied.returncode == 0, applied.stderr
        assert "session(s) of a running service" in applied.stdout
        assert await stored_offsets(migrated_database, group) == {}
        await produce_stream(kafka_bootstrap, topics, second)
        await wait_caught_up(migrated_database, kafka_bootstrap, group, inputs)
    expected = expected_event_counts([*first, *second])
    assert await event_counts_in(migrated_database) == expected
