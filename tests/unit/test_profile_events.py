"""`organization.profile.v1` in the pure core and the decoder: a profile event does to
an organization's state what `healthscore import --profiles` does, is a decision point
once the organization has events, and is not activity."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import msgspec
import orjson

from healthscore import contracts
from healthscore.core.effects import BatchEffects, compute_batch_effects
from healthscore.core.enums import AlertKind, MilestoneType, UsageType
from healthscore.core.events import Event, ProfileEvent, UsageEvent
from healthscore.core.scoring.aggregate import apply_profile, new_state
from healthscore.core.scoring.model import default_model
from healthscore.core.scoring.score import score
from healthscore.core.scoring.state import OrganizationState, current_as_of
from healthscore.service.imports import parse_profiles, profile_records
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord, event_json
from healthscore.service.ingest.pipeline import payload_digest

ORG = uuid.UUID("5f0c8a52-9d1e-4c3b-8f7a-2b6e1d0c9a44")
USER = uuid.UUID(int=7)
START = datetime(2026, 3, 2, 9, tzinfo=UTC)
LONG_AGO = START - timedelta(days=500)
MODEL = default_model()
PROFILE_TOPIC = "organization.profile.v1"


def _logins(days: int, start: datetime = START) -> list[Event]:
    return [
        UsageEvent(
            event_id=uuid.uuid5(ORG, f"login-{day}"),
            organization_id=ORG,
            user_id=USER,
            type=UsageType.LOGIN,
            occurred_at=start + timedelta(days=day),
        )
        for day in range(days)
    ]


def _profile(at: datetime, name: str = "p", **fields: object) -> ProfileEvent:
    body: dict[str, object] = {
        "created_at": LONG_AGO,
        "milestones": {
            MilestoneType.ONBOARDING_COMPLETED.value: LONG_AGO + timedelta(days=20),
            MilestoneType.FIRST_CLIENT_ADDED.value: LONG_AGO + timedelta(days=35),
        },
        **fields,
    }
    return ProfileEvent(
        event_id=uuid.uuid5(ORG, name),
        organization_id=ORG,
        occurred_at=at,
        **body,  # type: ignore[arg-type]
    )


def _run(
    events: list[Event], states: dict[str, OrganizationState] | None = None
) -> tuple[BatchEffects, dict[str, OrganizationState]]:
    states = {} if states is None else states
    return compute_batch_effects(events, states, {}, MODEL), states


def test_a_profile_sets_what_the_import_sets() -> None:
    event = _profile(START)
    _, states = _run([event])
    imported = new_state(str(ORG))
    apply_profile(
        imported,
        LONG_AGO.timestamp(),
        {name: at.timestamp() for name, at in event.milestones.items()},
    )
    imported.recent_event_ids.append(str(event.event_id))  # an alert's `caused_by`
    assert states[str(ORG)] == imported


def test_a_profile_before_any_event_is_applied_and_not_scored() -> None:
    effects, states = _run([_profile(START)])
    state = states[str(ORG)]
    assert effects.applied == 1 and not effects.rescored and not effects.daily
    assert state.created_at == LONG_AGO.timestamp()
    assert state.last_event_at is None and state.first_event_at is None  # not activity
    # its first event is scored with the account's tenure: not a new organization
    effects, _ = _run(_logins(1), states)
    assert effects.rescored[str(ORG)].health.segment == "established"


def _missing_milestones(state: OrganizationState) -> float:
    as_of = current_as_of(state)
    assert as_of is not None
    factors = score(state, as_of, MODEL).risk_factors
    return sum(f.impact for f in factors if f.factor == "missing_milestones")


def test_a_profile_after_events_is_a_decision_point_and_counts_what_was_reached() -> None:
    effects, states = _run(_logins(20))
    before = effects.rescored[str(ORG)].health
    state = states[str(ORG)]
    newest = state.last_event_at
    assert before.segment == "new" and _missing_milestones(state) < 0
    everything = {m.value: LONG_AGO + timedelta(days=30) for m in MilestoneType}
    profile = _profile(START + timedelta(days=19, hours=5), milestones=everything)
    effects, _ = _run([profile], states)
    after = effects.rescored[str(ORG)]  # decided at once, its score in the day's history
    assert after.scored_at == newest  # as of the newest event: a profile is not activity
    assert effects.daily[(str(ORG), int(newest // 86_400))] is after
    assert state.last_event_at == newest and state.first_event_at == START.timestamp()
    assert state.event_count == 20 and state.recent_event_ids[-1] == str(profile.event_id)
    assert after.health.segment == "established"  # tenure from the account's creation
    assert _missing_milestones(state) == 0
    assert state.last_score == after.health.score != before.score


def test_a_profile_is_idempotent_and_the_earliest_times_win() -> None:
    _, states = _run([*_logins(5), _profile(START + timedelta(days=6))])
    once = copy.deepcopy(states[str(ORG)])
    # the same profile again, and a later one with later times: nothing moves
    later = _profile(
        START + timedelta(days=7),
        "later",
        created_at=LONG_AGO + timedelta(days=100),
        milestones={MilestoneType.ONBOARDING_COMPLETED.value: LONG_AGO + timedelta(days=200)},
    )
    _run([_profile(START + timedelta(days=6)), later], states)
    again = states[str(ORG)]
    assert again.created_at == once.created_at and again.milestones == once.milestones


def test_profile_and_usage_commute_in_the_state_they_leave() -> None:
    """Order-independent aggregates: only the path between them depends on the order."""
    profile = _profile(START + timedelta(days=2, hours=1))
    _, first = _run([profile, *_logins(4)])
    _, last = _run([*_logins(4), profile])
    a, b = first[str(ORG)], last[str(ORG)]
    assert (a.created_at, a.milestones, a.event_count) == (
        b.created_at,
        b.milestones,
        b.event_count,
    )


def _record(body: Mapping[str, object], key: uuid.UUID = ORG) -> RawRecord:
    sent = datetime.fromisoformat(str(body["occurred_at"])) + timedelta(seconds=1)
    return RawRecord(
        PROFILE_TOPIC, 0, 0, str(key).encode(), orjson.dumps(body), int(sent.timestamp() * 1000)
    )


def test_the_decoder_reads_a_profile_and_digests_it_as_pydantic_writes_it() -> None:
    body: dict[str, object] = {
        "event_id": str(uuid.uuid5(ORG, "wire")),
        "organization_id": str(ORG),
        "created_at": "2023-04-01T00:00:00+02:00",
        "milestones": {
            "onboarding_completed": "2023-04-20T00:00:00Z",
            "first_client_added": "2023-05-02T10:00:00.5Z",
        },
        "occurred_at": "2026-12-01T00:00:00Z",
        "ignored": "extra fields are ignored, as on every input topic",
    }
    decoded = Decoder("usage", "support", 64 * 1024).decode(_record(body))
    assert isinstance(decoded, Decoded) and isinstance(decoded.event, ProfileEvent)
    event = decoded.event
    assert event.created_at == datetime(2023, 3, 31, 22, tzinfo=UTC)
    assert event.milestones["first_client_added"] == datetime(2023, 5, 2, 10, 0, 0, 500000, UTC)
    validated = contracts.OrganizationProfile.model_validate(body)
    assert event_json(event) == validated.model_dump_json().encode()
    # the profile topic's name is a setting like the others
    elsewhere = Decoder("usage", "support", 64 * 1024, profile_topic="crm.profiles")
    moved = RawRecord("crm.profiles", 0, 0, str(ORG).encode(), orjson.dumps(body), None)
    assert isinstance(elsewhere.decode(moved), Decoded)
    assert not isinstance(elsewhere.decode(_record(body)), Decoded)


def test_an_empty_profile_is_valid_and_changes_nothing() -> None:
    body = {
        "event_id": str(uuid.uuid4()),
        "organization_id": str(ORG),
        "occurred_at": START.isoformat(),
    }
    decoded = Decoder("usage", "support", 64 * 1024).decode(_record(body))
    assert isinstance(decoded, Decoded)
    _, states = _run(_logins(3))
    before = copy.deepcopy(states[str(ORG)])
    _run([decoded.event], states)
    after = states[str(ORG)]
    assert (after.created_at, after.milestones) == (before.created_at, before.milestones)


def test_a_file_row_that_knows_nothing_is_not_published() -> None:
    """A CSV row with an organization and nothing else changes nothing when imported;
    published, it is a profile the topic would take only as long as no usage or support
    field rides along (`healthscore import --publish` says how many it left out)."""
    other = uuid.uuid5(ORG, "other")
    text = f"organization_id,created_at,milestones\n{ORG},{LONG_AGO.isoformat()},\n{other},,\n"
    profiles = parse_profiles(text, "crm.csv", START)
    assert len(profiles) == 2
    ((key, _value),) = profile_records(profiles, START)
    assert key == str(ORG).encode()


def test_two_publishes_of_one_file_never_share_an_event_id_with_another_payload() -> None:
    """The service dedupes on (event id, payload digest): an id two publishes share
    while their `occurred_at` differs would dead-letter the second as a conflict."""
    text = (
        "organization_id,created_at,milestones\n"
        f"{ORG},{LONG_AGO.isoformat()},onboarding_completed={LONG_AGO.isoformat()}\n"
    )
    decoder = Decoder("usage", "support", 64 * 1024)
    seen: dict[uuid.UUID, bytes] = {}
    for sent in (START, START + timedelta(seconds=5), START):
        ((key, value),) = profile_records(parse_profiles(text, "crm.csv", sent), sent)
        sent_ms = int(sent.timestamp() * 1000) + 1000
        decoded = decoder.decode(RawRecord(PROFILE_TOPIC, 0, 0, key, value, sent_ms))
        assert isinstance(decoded, Decoded)
        digest = payload_digest(decoded)
        assert seen.setdefault(decoded.event.event_id, digest) == digest
    assert len(seen) == 2  # the same record sent again is one event


def test_an_alert_decided_on_a_profile_names_it_among_its_causes() -> None:
    """`caused_by`: the events that moved the score. A profile that says the
    organization is old (no grace period) and reached no milestone moves it down."""
    eager = msgspec.structs.replace(
        MODEL,
        alerts=msgspec.structs.replace(
            MODEL.alerts,
            enter_probability=0.02,
            exit_probability=0.01,
            persist_hours=0.0,
            immediate_probability=None,
        ),
    )
    states: dict[str, OrganizationState] = {}
    assert not compute_batch_effects(_logins(3), states, {}, eager).alerts
    profile = _profile(START + timedelta(days=2, hours=1), milestones={})
    effects = compute_batch_effects([profile], states, {}, eager)
    (alert,) = effects.alerts
    assert alert.decision.kind is AlertKind.RISK_RAISED
    assert alert.caused_by[-1] == str(profile.event_id)
