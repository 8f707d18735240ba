"""The simulated stream: deterministic, valid where it says so, shaped by profile."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from healthscore.core.events import ProfileEvent
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord, Rejection
from healthscore.service.ingest.pipeline import payload_digest
from healthscore_lab.simulator import (
    SimulatedMessage,
    SimulationConfig,
    generate,
    organization_profiles,
)

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"
START = datetime(2025, 1, 6, tzinfo=UTC)
CONFIG = SimulationConfig(start=START)
STREAM = list(generate(CONFIG))


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _decode_all(
    messages: list[SimulatedMessage],
) -> list[tuple[SimulatedMessage, Decoded | Rejection]]:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    results = []
    previous_ms: int | None = None
    for offset, message in enumerate(messages):
        if message.occurred_at is not None:
            previous_ms = _ms(message.occurred_at)
        record = RawRecord(
            topic=USAGE if message.topic_kind == "usage" else SUPPORT,
            partition=0,
            offset=offset,
            key=message.key,
            value=message.value,
            timestamp_ms=previous_ms,
        )
        results.append((message, decoder.decode(record)))
    return results


def test_same_seed_same_bytes_other_seed_differs() -> None:
    again = list(generate(CONFIG))
    assert [(m.topic_kind, m.key, m.value) for m in again] == [
        (m.topic_kind, m.key, m.value) for m in STREAM
    ]
    assert again == STREAM
    other = list(generate(SimulationConfig(start=START, seed=8)))
    assert [m.value for m in other] != [m.value for m in STREAM]
    assert organization_profiles(CONFIG) == organization_profiles(CONFIG)
    assert set(organization_profiles(CONFIG)) != set(
        organization_profiles(SimulationConfig(start=START, seed=8))
    )


def test_counts() -> None:
    originals = [m for m in STREAM if m.valid and not m.is_duplicate]
    duplicates = [m for m in STREAM if m.is_duplicate]
    malformed = [m for m in STREAM if not m.valid]
    assert len(originals) == CONFIG.events
    assert len(duplicates) == round(CONFIG.events * CONFIG.duplicate_rate)
    assert len(malformed) == round(CONFIG.events * CONFIG.malformed_rate)
    assert all(m.is_duplicate is False for m in malformed)
    support = sum(1 for m in originals if m.topic_kind == "support")
    assert support == round(CONFIG.events * CONFIG.support_share)
    assert len({m.event_id for m in originals}) == CONFIG.events


def test_every_valid_message_decodes_and_matches_its_metadata() -> None:
    for message, result in _decode_all(STREAM):
        if not message.valid:
            continue
        assert isinstance(result, Decoded), (result.reason, result.detail, message.value)
        event = result.event
        assert str(event.event_id) == message.event_id
        assert str(event.organization_id) == message.organization_id
        assert message.key == str(event.organization_id).encode()
        assert event.occurred_at == message.occurred_at
        assert (message.topic_kind == "usage") == (result.record.topic == USAGE)


def test_every_malformed_message_gets_its_reason() -> None:
    config = SimulationConfig(start=START, events=3000, malformed_rate=0.05, seed=11)
    messages = list(generate(config))
    malformed = 0
    reasons: set[str] = set()
    for message, result in _decode_all(messages):
        if message.valid:
            assert isinstance(result, Decoded)
            continue
        malformed += 1
        assert message.event_id is None and message.occurred_at is None
        assert isinstance(result, Rejection), message.value[:200]
        assert result.reason == message.expected_reason, (result.detail, message.value[:200])
        reasons.add(result.reason)
    assert malformed == 150
    assert len(reasons) >= 10


def test_originals_are_in_event_time_order_per_organization() -> None:
    last: dict[str | None, datetime] = {}
    previous: datetime | None = None
    for message in STREAM:
        if not message.valid or message.is_duplicate:
            continue
        assert message.occurred_at is not None
        if previous is not None:
            assert message.occurred_at >= previous
        previous = message.occurred_at
        seen = last.get(message.organization_id)
        assert seen is None or message.occurred_at >= seen
        last[message.organization_id] = message.occurred_at
    originals = [m for m in STREAM if m.valid and not m.is_duplicate]
    assert originals[0].occurred_at == START
    assert all(m.occurred_at is not None and m.occurred_at < START + CONFIG.span for m in originals)


def test_duplicates_repeat_an_earlier_original() -> None:
    seen: dict[str | None, SimulatedMessage] = {}
    duplicates = 0
    for message in STREAM:
        if not message.valid:
            continue
        if message.is_duplicate:
            duplicates += 1
            original = seen[message.event_id]
            assert original.value == message.value
            assert original.key == message.key
            assert original.topic_kind == message.topic_kind
        else:
            seen[message.event_id] = message
    assert duplicates > 0


def _usage_by_third(
    config: SimulationConfig, messages: list[SimulatedMessage]
) -> dict[str, list[float]]:
    profiles = organization_profiles(config)
    per_profile = Counter(profiles.values())
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for message in messages:
        if message.valid and not message.is_duplicate and message.topic_kind == "usage":
            assert message.occurred_at is not None and message.organization_id is not None
            third = min(2, int((message.occurred_at - config.start) / config.span * 3))
            counts[profiles[message.organization_id]][third] += 1
    return {
        profile: [value / per_profile[profile] for value in counts[profile]]
        for profile in per_profile
    }


def test_profiles_shape_activity() -> None:
    profiles = organization_profiles(CONFIG)
    assert len(profiles) == CONFIG.organizations
    assert Counter(profiles.values()) == {"healthy": 30, "declining": 12, "churning": 8}
    thirds = _usage_by_third(CONFIG, STREAM)
    healthy, declining, churning = thirds["healthy"], thirds["declining"], thirds["churning"]
    assert churning[2] < 0.2 * healthy[2]
    assert declining[2] < 0.5 * declining[0]
    assert healthy[2] > 0.6 * healthy[0]


def _bodies(messages: list[SimulatedMessage]) -> list[dict[str, object]]:
    return [orjson.loads(m.value) for m in messages if m.valid and not m.is_duplicate]


def test_realistic_mix_of_usage_types() -> None:
    usage = Counter(body["type"] for body in _bodies(STREAM) if "type" in body)
    top_two = {name for name, _ in usage.most_common(2)}
    assert top_two == {"login", "feature_used"}
    assert {"onboarding_completed", "profile_completed", "client_added", "payment_received"} <= set(
        usage
    )
    assert {"subscription_downgraded", "data_export_requested"} <= set(usage)
    for body in _bodies(STREAM):
        if body.get("type") == "feature_used":
            assert isinstance(body["feature"], str)
        if "type" in body and body["type"] not in {
            "form_submitted",
            "payment_received",
            "review_received",
        }:
            assert body["user_id"] is not None
    quantities = Counter(body["quantity"] == 1 for body in _bodies(STREAM) if "type" in body)
    assert quantities[True] > 20 * quantities[False]


def test_support_interactions_are_coherent_and_profiled() -> None:
    profiles = organization_profiles(CONFIG)
    interactions: dict[object, list[dict[str, object]]] = defaultdict(list)
    for body in _bodies(STREAM):
        if "action" in body:
            interactions[body["interaction_id"]].append(body)
    assert len(interactions) > 20
    left_open_by_profile: Counter[str] = Counter()
    negative_openings: Counter[str] = Counter()
    for events in interactions.values():
        actions = [event["action"] for event in events]
        organization = events[0]["organization_id"]
        assert isinstance(organization, str)
        assert {event["organization_id"] for event in events} == {organization}
        profile = profiles[organization]
        if actions[0] == "opened":
            opened = events[0]
            assert opened["interaction_type"] and opened["channel"] and opened["subject"]
            if opened["sentiment"] in {"negative", "very_negative"}:
                negative_openings[profile] += 1
            if "resolved" not in actions and "closed" not in actions:
                left_open_by_profile[profile] += 1
        for event in events:
            if event["action"] == "follow_up_scheduled":
                assert event["follow_up_at"] is not None
        assert actions.count("opened") <= 1
    assert negative_openings["churning"] > 0
    assert negative_openings["healthy"] == 0
    assert left_open_by_profile["churning"] > left_open_by_profile["healthy"]


def test_small_and_odd_configs() -> None:
    assert list(generate(SimulationConfig(start=START, events=0))) == []
    tiny = list(generate(SimulationConfig(start=START, events=10, organizations=50)))
    assert sum(1 for m in tiny if m.valid and not m.is_duplicate) == 10
    short = SimulationConfig(start=START, events=500, organizations=3, span=timedelta(hours=1))
    messages = list(generate(short))
    assert all(
        m.occurred_at is None or START <= m.occurred_at < START + timedelta(hours=1)
        for m in messages
    )
    for message, result in _decode_all(messages):
        assert isinstance(result, Decoded) == message.valid


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        SimulationConfig(start=datetime(2025, 1, 1))
    with pytest.raises(ValueError):
        SimulationConfig(start=START, duplicate_rate=1.5)
    with pytest.raises(ValueError):
        SimulationConfig(start=START, profile_mix={"zombie": 1.0})


PROFILE = "organization.profile.v1"


def test_profiles_from_a_crm_ride_the_stream() -> None:
    """`profile_share`: valid profiles (a repeat re-serialized has its original's
    digest), bad ones with their reason; without it, the stream is unchanged."""
    config = SimulationConfig(start=START, events=3000, organizations=200, profile_share=0.3)
    messages = list(generate(config))
    plain = list(generate(SimulationConfig(start=START, events=3000, organizations=200)))
    assert [m for m in messages if m.topic_kind != "profile"] == plain
    assert messages == list(generate(config))

    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, profile_topic=PROFILE)
    topics = {"usage": USAGE, "support": SUPPORT, "profile": PROFILE}
    digests: dict[str, bytes] = {}
    originals = repeats = bad = 0
    previous_ms: int | None = None
    for offset, message in enumerate(messages):
        if message.occurred_at is not None:
            previous_ms = _ms(message.occurred_at)
        if message.topic_kind != "profile":
            continue
        record = RawRecord(
            topics[message.topic_kind], 0, offset, message.key, message.value, previous_ms
        )
        result = decoder.decode(record)
        if not message.valid:
            bad += 1
            assert isinstance(result, Rejection)
            assert result.reason == message.expected_reason, (result.detail, message.value)
            continue
        assert isinstance(result, Decoded), (result.reason, result.detail, message.value)
        assert message.event_id is not None
        digest = payload_digest(result)
        if message.is_duplicate:
            repeats += 1
            assert digests[message.event_id] == digest  # a repeat, not a conflict
            assert message.value != next(
                m.value for m in messages if m.event_id == message.event_id
            )
        else:
            originals += 1
            digests[message.event_id] = digest
            event = result.event
            assert isinstance(event, ProfileEvent)
            assert event.created_at is not None and event.created_at < START
            assert event.milestones and all(at < START for at in event.milestones.values())
    assert originals == round(200 * 0.3)
    assert 0 < repeats < originals
    assert bad >= 1
