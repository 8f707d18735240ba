"""Replaying the topics into an empty database rebuilds exactly the live run's state.

The live service (in-process) consumes a simulated stream while it is being
produced (small batches, cut by timing); then `healthscore.replay.replay`
rebuilds everything from the same topics into a second freshly migrated
database (large batches, cut differently), and the two are compared.

What must match, and what may not:

* One topic (usage only): the order of each organization's events is the
  partition order, so everything matches: every state document byte for
  byte, every customer_health column, and every alert (id and payload).
* Two topics: an organization's usage and support events sit on two topics
  with no order between them, and the consumer interleaves them differently
  in every run. Everything that is a function of the *set* of events matches
  (processed ids, counters, totals, milestones, features, users, open
  interactions, support_interactions rows, milestone rows, health_score).
  What depends on the *sequence* may differ, for organizations that have
  support events only: the per-event score trail (`daily_scores`, hence
  score_change_7d/30d, churn_probability and risk_level), the order of
  `recent_event_ids`, the alert state machine and so the alert ids, the last
  bits of the decayed sums (float additions in another order), and
  previous_score (the score before the organization's last applied event,
  which is another event when the interleaving differs).
"""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

from healthscore.replay import replay
from healthscore.simulator import SimulatedMessage
from tests.conftest import DatabaseFactory
from tests.utils.harness import make_topics, running_service, service_settings
from tests.utils.scenarios import (
    Snapshot,
    assert_identical_for,
    assert_same_event_set_state,
    diff_fields,
    expected_event_counts,
    only,
    organizations_by_topic,
    produce_stream,
    simulated_stream,
    snapshot,
    wait_caught_up,
)

# The sequence-dependent parts (see the module docstring).
ORDER_DEPENDENT_STATE = {"daily_scores", "recent_event_ids", "alert", "decayed"}
ORDER_DEPENDENT_HEALTH = {
    "churn_probability",
    "risk_level",
    "score_change_7d",
    "score_change_30d",
    "previous_score",
}


async def _live_then_replay(
    kafka_bootstrap: str,
    database_factory: DatabaseFactory,
    migrated_template: str,
    messages: list[SimulatedMessage],
) -> tuple[Snapshot, Snapshot]:
    topics = await make_topics(kafka_bootstrap, partitions=4)
    live_db = await database_factory(template=migrated_template)
    settings = service_settings(live_db, kafka_bootstrap, topics, batch_max_records=500)
    async with running_service(settings):
        # produced while the service consumes: live batches are small and timing-cut
        await produce_stream(kafka_bootstrap, topics, messages)
        await wait_caught_up(
            live_db, kafka_bootstrap, settings.consumer_group, [topics.usage, topics.support]
        )
    live = await snapshot(live_db)

    replay_db = await database_factory(template=migrated_template)
    replay_settings = service_settings(replay_db, kafka_bootstrap, topics)
    result = await replay(replay_settings, timeout=120.0)
    rebuilt = await snapshot(replay_db)
    assert result.events_applied == len(live.processed_events)
    assert result.alerts == len(rebuilt.alerts)
    return live, rebuilt


def _documents(snap: Snapshot, orgs: set[str]) -> dict[str, dict[str, Any]]:
    return {org: s["document"] for org, s in only(snap.states, orgs).items()}


async def test_replay_of_usage_only_stream_is_identical(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    messages = simulated_stream(organizations=60, events=3000, support_share=0.0, seed=41)
    live, rebuilt = await _live_then_replay(
        kafka_bootstrap, database_factory, migrated_template, messages
    )
    counts = expected_event_counts(messages)
    assert len(live.processed_events) == sum(counts.values()) == 3000
    assert {org: s["document"]["event_count"] for org, s in live.states.items()} == counts
    assert len(live.milestones) > 100

    assert_same_event_set_state(live, rebuilt)
    # one topic: nothing may differ at all
    assert_identical_for(live, rebuilt, set(live.states))
    assert diff_fields(live.health, rebuilt.health) == {}
    assert live.alerts, "the declining and churning organizations must raise alerts"
    assert rebuilt.alerts == live.alerts  # ids, kinds, episodes and whole payloads


async def test_replay_of_usage_and_support_stream(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    messages = simulated_stream(organizations=60, events=3000, support_share=0.08, seed=7)
    live, rebuilt = await _live_then_replay(
        kafka_bootstrap, database_factory, migrated_template, messages
    )
    counts = expected_event_counts(messages)
    assert len(live.processed_events) == sum(counts.values()) == 3000
    usage_only, mixed = organizations_by_topic(messages)
    assert len(live.interactions) > 50 and len(usage_only) > 10
    assert usage_only | mixed == set(live.states)

    assert_same_event_set_state(live, rebuilt)
    # organizations with usage events only: one topic's order, so everything matches
    assert_identical_for(live, rebuilt, usage_only)

    # organizations with support events: only the sequence-dependent parts may differ
    document_diff = diff_fields(_documents(live, mixed), _documents(rebuilt, mixed))
    health_diff = diff_fields(only(live.health, mixed), only(rebuilt.health, mixed))
    assert set(document_diff) <= ORDER_DEPENDENT_STATE, document_diff
    assert set(health_diff) <= ORDER_DEPENDENT_HEALTH, health_diff
    for org in document_diff.get("decayed", []):
        a, b = live.states[org]["document"]["decayed"], rebuilt.states[org]["document"]["decayed"]
        assert a.keys() == b.keys()
        assert all(math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12) for k in a), org
    for org in document_diff.get("recent_event_ids", []):
        # the same newest events, perhaps in another order (or another one at the edge)
        a = live.states[org]["document"]["recent_event_ids"]
        b = rebuilt.states[org]["document"]["recent_event_ids"]
        assert len(a) == len(b) and set(a) <= live.processed_events
    mixed_alerts_live = only(live.alerts, mixed, "organization_id")
    mixed_alerts_replay = only(rebuilt.alerts, mixed, "organization_id")
    print(
        "\nsequence-dependent differences (organizations with support events):",
        {k: len(v) for k, v in document_diff.items()},
        {k: len(v) for k, v in health_diff.items()},
        f"alerts live {len(mixed_alerts_live)} replay {len(mixed_alerts_replay)}"
        f" common {len(mixed_alerts_live.keys() & mixed_alerts_replay.keys())}",
    )


def test_replay_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "healthscore.cli", "replay", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: healthscore replay")
    assert "--publish-alerts" in result.stdout
    assert "empty DATABASE_URL" in result.stdout


async def test_two_replays_with_different_batch_sizes_are_identical(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    """Catch-up applies the log in event-time order whatever the fetch sizes.

    With both topics already in Kafka, the event-time alignment makes every
    batch apply exactly the records up to its stream time, so two replays cut
    into very different batches make the same decisions: the sequence-dependent
    parts (score trail, churn probability, alert ids) match too.
    """
    messages = simulated_stream(organizations=60, events=3000, support_share=0.08, seed=11)
    topics = await make_topics(kafka_bootstrap, partitions=4)
    await produce_stream(kafka_bootstrap, topics, messages)
    snapshots = []
    for batch_max_records in (300, 5000):
        db = await database_factory(template=migrated_template)
        settings = service_settings(
            db, kafka_bootstrap, topics, batch_max_records=batch_max_records
        )
        await replay(settings, timeout=120.0)
        snapshots.append(await snapshot(db))
    small, large = snapshots
    assert len(small.processed_events) == 3000
    assert_same_event_set_state(small, large)
    documents = diff_fields(
        _documents(small, set(small.states)), _documents(large, set(large.states))
    )
    health = diff_fields(small.health, large.health)
    print(
        "\ndifferences between the two replays:",
        {k: len(v) for k, v in documents.items()},
        {k: len(v) for k, v in health.items()},
        f"alerts {len(small.alerts)} / {len(large.alerts)} common "
        f"{len(small.alerts.keys() & large.alerts.keys())}",
    )
    assert_identical_for(small, large, set(small.states))
    assert small.alerts.keys() == large.alerts.keys()
    assert len(small.alerts) > 0
