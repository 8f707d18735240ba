"""Replaying the topics into an empty database rebuilds exactly the live run's state.

The live service (in-process) consumes a simulated stream while it is being
produced (small batches, cut by timing); then `healthscore.service.replay.replay`
rebuilds everything from the same topics into a second freshly migrated
database (large batches, cut differently), and the two are compared. These
first comparisons run without the silence sweep on either side (`serve
--no-sweep`, `replay --no-sweep`); the last test runs it on both, as `serve`
and `replay` do by default.

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
  bits of the decayed sums (float additions in another order).
* customer_health.previous_score is the score the read model showed before
  its last change, which depends on when the projector looked: it is left out
  of every comparison.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from healthscore.core.alignment import AlignmentView
from healthscore.core.effects import BatchEffects, compute_batch_effects
from healthscore.core.quality import aggregate_settings
from healthscore.core.scoring.model import V1_MODEL_PATH, V2_MODEL_PATH, load_model
from healthscore.errors import StartupRefused
from healthscore.service.app import ServiceOptions
from healthscore.service.ingest import pipeline as pipeline_module
from healthscore.service.ingest.decode import Decoded, Rejection
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.replay import replay
from healthscore.store import sql
from healthscore_lab.simulator import SimulatedMessage
from tests.conftest import DatabaseFactory
from tests.utils.harness import ServiceProcess, make_topics, running_service, service_settings
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
# last_churn_probability: the last recorded score's, as order-dependent as the health
# row's churn_probability (what the decision points read, core/effects.py)
ORDER_DEPENDENT_STATE = {
    "daily_scores",
    "recent_event_ids",
    "alert",
    "decayed",
    "last_churn_probability",
}
ORDER_DEPENDENT_HEALTH = {
    "churn_probability",
    "risk_level",
    "score_change_7d",
    "score_change_30d",
}


async def _live_then_replay(
    kafka_bootstrap: str,
    database_factory: DatabaseFactory,
    migrated_template: str,
    messages: list[SimulatedMessage],
) -> tuple[Snapshot, Snapshot]:
    topics = await make_topics(kafka_bootstrap, partitions=4)
    live_db = await database_factory(template=migrated_template)
    # v1: this short scripted stream raises alerts under v1's thresholds, which is what
    # makes comparing them worth something; v2 (fitted thresholds, persistence) raises
    # none on it without a silence sweep. Determinism does not depend on the model.
    settings = service_settings(
        live_db, kafka_bootstrap, topics, batch_max_records=500, model_path=V1_MODEL_PATH
    )
    async with running_service(settings):
        # produced while the service consumes: live batches are small and timing-cut
        await produce_stream(kafka_bootstrap, topics, messages)
        await wait_caught_up(
            live_db, kafka_bootstrap, settings.consumer_group, [topics.usage, topics.support]
        )
    live = await snapshot(live_db)

    replay_db = await database_factory(template=migrated_template)
    replay_settings = service_settings(replay_db, kafka_bootstrap, topics, model_path=V1_MODEL_PATH)
    # the live run above had no silence sweep (the harness's default)
    result = await replay(replay_settings, timeout=120.0, sweep=False)
    rebuilt = await snapshot(replay_db)
    assert result.events_applied == len(live.processed_events)
    assert result.alerts == len(rebuilt.alerts)
    return live, rebuilt


def _documents(snap: Snapshot, orgs: set[str]) -> dict[str, dict[str, Any]]:
    return {org: s["document"] for org, s in only(snap.states, orgs).items()}


async def test_replay_of_usage_only_stream_is_identical(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    messages = simulated_stream(organizations=60, events=3000, support_share=0.0, seed=47, days=30)
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
    rescorings = []
    for batch_max_records in (300, 5000):
        db = await database_factory(template=migrated_template)
        settings = service_settings(
            db, kafka_bootstrap, topics, batch_max_records=batch_max_records
        )
        result = await replay(settings, timeout=120.0)  # with the silence sweep
        snapshots.append(await snapshot(db))
        rescorings.append(await sweep_rescorings(db))
        assert result.silence_days == len(rescorings[-1])
    small, large = snapshots
    assert rescorings[0] == rescorings[1] and len(rescorings[0]) > 0
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


# --------------------------------------------------------------------------- the sweep on


async def sweep_rescorings(database_url: str) -> set[tuple[str, datetime, float, float]]:
    """(organization, scored_at, score, churn probability) of every history row whose
    day ended in a silence rescoring (one row per organization and day)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT organization_id, scored_at, health_score::float8 AS score, "
            "churn_probability::float8 AS p FROM health_score_history WHERE cause = 'sweep'"
        )
    finally:
        await conn.close()
    found = {(str(r["organization_id"]), r["scored_at"], r["score"], r["p"]) for r in rows}
    assert len(found) == len(rows)
    return found


def with_silences(messages: list[SimulatedMessage]) -> tuple[list[SimulatedMessage], set[str]]:
    """Some organizations fall silent for five days mid-stream, some for good after day 9."""
    start = min(m.occurred_at for m in messages if m.occurred_at is not None)
    orgs = sorted({m.organization_id for m in messages if m.valid and m.organization_id})
    paused, gone = set(orgs[0:12:3]), set(orgs[1:12:4])

    def dropped(m: SimulatedMessage) -> bool:
        if m.occurred_at is None or m.organization_id is None:
            return False
        day = (m.occurred_at - start) / timedelta(days=1)
        return (m.organization_id in paused and 6 <= day < 11) or (
            m.organization_id in gone and day >= 9
        )

    return [m for m in messages if not dropped(m)], paused | gone


async def test_live_with_the_silence_sweep_decides_like_replay(
    kafka_bootstrap: str,
    database_factory: DatabaseFactory,
    migrated_template: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 10: with the sweep on, live and replay disagreed on 98 of 700 alerts.

    The sweep rescored silent organizations at the wall-clock moments it ran.
    Now silence rescorings fall on the event-time grid, below the log's
    watermark, or in the batch that ends the silence: the live run (40-record
    batches, a sweep after every batch and every 20 ms besides) and the replay
    (5,000-record batches, the sweep once the log is applied) make the same
    rescorings and the same alerts, and end in the same state.
    """
    stream = simulated_stream(
        organizations=60,
        events=3000,
        support_share=0.08,
        seed=23,
        duplicate_rate=0.01,
        malformed_rate=0.002,
    )
    messages, silenced = with_silences(stream)
    topics = await make_topics(kafka_bootstrap, partitions=4)
    await produce_stream(kafka_bootstrap, topics, messages)

    live_db = await database_factory(template=migrated_template)
    # the log is all there before the live run starts: the live run catches it up,
    # aligned throughout like the replay (live traffic is applied as it arrives,
    # which for topics arriving in event-time order is the same order)
    settings = service_settings(
        live_db,
        kafka_bootstrap,
        topics,
        batch_max_records=40,
        sweep_interval_seconds=0.02,
        alignment_live_lag_records=0,
        model_path=V2_MODEL_PATH,  # its alerts on this stream are what the comparison needs
    )
    async with running_service(settings, ServiceOptions(create_topics=False)) as service:
        pipeline, sweep = service.pipeline, service.sweep
        assert pipeline is not None and sweep is not None
        process_items = pipeline.process_items

        async def process_then_sweep(
            items: Sequence[Decoded | Rejection],
            view: AlignmentView | None = None,
            positioned: Mapping[tuple[str, int], int] | None = None,
        ) -> BatchOutcome:
            outcome = await process_items(items, view, positioned)
            await sweep.run_once()  # the sweep between every two batches
            return outcome

        monkeypatch.setattr(pipeline, "process_items", process_then_sweep)
        # the silence rescorings the batches make (the history keeps a day's last only)
        in_batches = [0]

        def counting(*args: Any, **kwargs: Any) -> BatchEffects:
            effects = compute_batch_effects(*args, **kwargs)
            in_batches[0] += effects.silence_rescored
            return effects

        monkeypatch.setattr(pipeline_module, "compute_batch_effects", counting)
        await wait_caught_up(
            live_db, kafka_bootstrap, settings.consumer_group, [topics.usage, topics.support]
        )
        deadline = time.monotonic() + 60
        while await sweep.backlog() > 0:  # the service's own sweep reaches the watermark
            assert time.monotonic() < deadline, "the live sweep did not reach the watermark"
            await asyncio.sleep(0.1)
        live_sweep_rescorings = sweep.rescorings
        monkeypatch.setattr(pipeline_module, "compute_batch_effects", compute_batch_effects)
    live = await snapshot(live_db)
    live_rescorings = await sweep_rescorings(live_db)

    replay_db = await database_factory(template=migrated_template)
    replay_settings = service_settings(
        replay_db, kafka_bootstrap, topics, batch_max_records=5000, model_path=V2_MODEL_PATH
    )
    result = await replay(replay_settings, timeout=180.0)
    rebuilt = await snapshot(replay_db)
    rebuilt_rescorings = await sweep_rescorings(replay_db)

    print(
        f"\nsilence rescorings live: {live_sweep_rescorings} by the sweep, {in_batches[0]} in "
        f"batches; days ending in silence: live {len(live_rescorings)}, "
        f"replay {len(rebuilt_rescorings)}; alerts live {len(live.alerts)} "
        f"replay {len(rebuilt.alerts)} common {len(live.alerts.keys() & rebuilt.alerts.keys())}"
    )
    assert set(rebuilt.alerts) == set(live.alerts)  # the alert ids
    assert rebuilt_rescorings == live_rescorings
    assert rebuilt.alerts == live.alerts  # kinds, episodes and whole payloads
    assert_same_event_set_state(live, rebuilt)
    assert_identical_for(live, rebuilt, set(live.states))
    assert result.silence_days == len(rebuilt_rescorings)

    # what makes the comparison worth something
    assert len(live.processed_events) == sum(expected_event_counts(messages).values())
    assert live_sweep_rescorings > 0, "the live sweep rescored between batches"
    assert in_batches[0] > 0, "batches rescored silence too"
    swept = {org for org, _, _, _ in live_rescorings}
    assert silenced <= swept
    # an alert decided at a silence rescoring is scored at no event's time: the
    # history keeps only each day's last score, so whether a silence alert's day
    # ended in silence depends on where the stream's hours fall in UTC days
    event_times: dict[str, set[int]] = {}
    for m in messages:
        if m.organization_id is not None and m.occurred_at is not None:
            ms = round(m.occurred_at.timestamp() * 1000)
            event_times.setdefault(str(m.organization_id), set()).add(ms)
    on_silence = [
        a
        for a in live.alerts.values()
        if round(datetime.fromisoformat(a["payload"]["scored_at"]).timestamp() * 1000)
        not in event_times.get(str(a["organization_id"]), set())
    ]
    print(f"alerts at silence rescorings: {len(on_silence)} of {len(live.alerts)}")
    assert on_silence, "silence must raise alerts"


# --------------------------------------------------------------------------- resuming


async def test_a_killed_replay_resumes_to_the_end_an_uninterrupted_one_reaches(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    """A replay SIGKILLed after some batches keeps what it committed; run again on the
    same database it is refused unless asked to resume, and resumed it ends in the state
    of a replay that was never interrupted (scores, alerts, silence rescorings)."""
    messages = simulated_stream(organizations=60, events=6000, support_share=0.08, seed=12)
    topics = await make_topics(kafka_bootstrap, partitions=4)
    await produce_stream(kafka_bootstrap, topics, messages)

    whole_db = await database_factory(template=migrated_template)
    await replay(
        service_settings(whole_db, kafka_bootstrap, topics, batch_max_records=300), timeout=120.0
    )
    whole = await snapshot(whole_db)

    killed_db = await database_factory(template=migrated_template)
    settings = service_settings(killed_db, kafka_bootstrap, topics, batch_max_records=100)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "healthscore.cli",
        "replay",
        env=ServiceProcess(settings).env(),  # the environment a replay process reads
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    conn = await asyncpg.connect(killed_db)
    try:
        deadline = time.monotonic() + 120
        while not await conn.fetchval("SELECT count(*) FROM processed_events"):
            assert process.returncode is None, "the replay ended before it was killed"
            assert time.monotonic() < deadline, "the replay committed nothing"
            await asyncio.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)
        applied_before = await conn.fetchval("SELECT count(*) FROM processed_events")
    finally:
        await conn.close()
    assert 0 < applied_before < 6000, applied_before
    groups = await _stored_groups(killed_db)
    assert len(groups) == 1 and groups[0].startswith(f"{settings.consumer_group}-replay-")

    with pytest.raises(StartupRefused, match="--resume"):
        await replay(settings, timeout=120.0)
    # the killed one ran with the silence sweep and without publishing: a resume with
    # other options would end elsewhere than an uninterrupted replay, and is refused
    ran = "ran with \\(neither --no-sweep nor --publish-alerts\\)"
    with pytest.raises(StartupRefused, match=f"{ran}; this one was given --no-sweep:"):
        await replay(settings, timeout=120.0, resume=True, sweep=False)
    with pytest.raises(StartupRefused, match=f"{ran}; this one was given --publish-alerts:"):
        await replay(settings, timeout=120.0, resume=True, publish_alerts=True)
    assert await _stored_groups(killed_db) == groups
    result = await replay(settings, timeout=120.0, resume=True)
    assert result.events_applied == 6000
    # went on from the killed one's offsets, not from the log's start under a new group
    assert await _stored_groups(killed_db) == groups
    print(f"\nkilled after {applied_before} of 6000 events; resumed in {result.seconds:.1f} s")
    resumed = await snapshot(killed_db)
    assert_same_event_set_state(whole, resumed)
    assert_identical_for(whole, resumed, set(whole.states))
    assert whole.alerts.keys() == resumed.alerts.keys() and len(whole.alerts) > 0
    assert await sweep_rescorings(whole_db) == await sweep_rescorings(killed_db)


async def _stored_groups(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r[0] for r in await conn.fetch(sql.STORED_GROUPS)]
    finally:
        await conn.close()


async def test_resume_refuses_a_database_that_is_not_one_interrupted_replay(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    """The live database (its group's offsets) is never taken for a replay to resume."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    db = await database_factory(template=migrated_template)
    settings = service_settings(db, kafka_bootstrap, topics)
    conn = await asyncpg.connect(db)
    try:
        await conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
            " VALUES ($1, $2, 0, 5)",
            settings.consumer_group,
            topics.usage,
        )
    finally:
        await conn.close()
    with pytest.raises(StartupRefused, match="not a replay: the live database"):
        await replay(settings, timeout=30.0, resume=True)
    with pytest.raises(StartupRefused, match="needs an empty database"):
        await replay(settings, timeout=30.0)


async def test_resume_goes_on_only_with_the_model_and_the_group_of_the_interrupted_replay(
    kafka_bootstrap: str, database_factory: DatabaseFactory, migrated_template: str
) -> None:
    """An interrupted replay's database holds its group's offsets and the model its
    service recorded at start: resuming under another MODEL_PATH would score the rest
    of the log with another model, and a group that merely starts with
    <CONSUMER_GROUP>-replay- is not one `replay` made."""
    topics = await make_topics(kafka_bootstrap, partitions=1)
    db = await database_factory(template=migrated_template)
    lookalike_db = await database_factory(template=migrated_template)
    settings = service_settings(db, kafka_bootstrap, topics)
    live_lookalike = service_settings(lookalike_db, kafka_bootstrap, topics)
    v1 = load_model(V1_MODEL_PATH)
    for url, group in (
        (db, f"{settings.consumer_group}-replay-0123abcd"),
        (lookalike_db, f"{settings.consumer_group}-replay-eu-west"),
    ):
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
                " VALUES ($1, $2, 0, 0)",
                group,
                topics.usage,
            )
            await conn.execute(
                "INSERT INTO score_models (version, aggregates) VALUES ($1, $2::jsonb)",
                v1.version,
                json.dumps(aggregate_settings(v1)),
            )
        finally:
            await conn.close()
    with pytest.raises(StartupRefused, match=f"scored with \\(version\\(s\\) {v1.version}\\)"):
        await replay(settings, timeout=30.0, resume=True)
    with pytest.raises(StartupRefused, match="not a replay: the live database"):
        await replay(
            live_lookalike.model_copy(update={"model_path": V1_MODEL_PATH}),
            timeout=30.0,
            resume=True,
        )
    # the same model: it goes on (the topics are empty: at their end at once); no
    # time limit, the read model's drain included
    result = await replay(
        settings.model_copy(update={"model_path": V1_MODEL_PATH}), timeout=None, resume=True
    )
    assert result.events_applied == 0
    assert await _stored_groups(db) == [f"{settings.consumer_group}-replay-0123abcd"]


async def test_a_publishing_replay_beside_the_live_service_is_refused(
    migrated_database: str,
    kafka_bootstrap: str,
    database_factory: DatabaseFactory,
    migrated_template: str,
) -> None:
    """`--publish-alerts` makes the replay a second sender of alerts beside the live
    service's relay: refused while the live group has members, allowed once it stops."""
    messages = simulated_stream(organizations=10, events=300, support_share=0.08, seed=5)
    topics = await make_topics(kafka_bootstrap, partitions=2)
    await produce_stream(kafka_bootstrap, topics, messages)
    live = service_settings(migrated_database, kafka_bootstrap, topics)
    replay_db = await database_factory(template=migrated_template)
    settings = service_settings(
        replay_db, kafka_bootstrap, topics, consumer_group=live.consumer_group
    )
    async with running_service(live):
        await wait_caught_up(
            migrated_database,
            kafka_bootstrap,
            live.consumer_group,
            [topics.usage, topics.support, topics.profile],
        )
        with pytest.raises(StartupRefused, match="while the live service runs"):
            await replay(settings, timeout=120.0, publish_alerts=True)
        # nothing was started for it: no group, no run recorded
        assert await _stored_groups(replay_db) == []
        # without publishing it is the runbook's step 2, beside the live service
        result = await replay(settings, timeout=120.0)
    assert result.events_applied == sum(expected_event_counts(messages).values())
