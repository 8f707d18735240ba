"""Bytes that outlive a release: payload digests, an alert payload, a health message.

`processed_events.payload_digest` is compared with digests stored by earlier
releases (a replayed event whose digest changed would be dead-lettered as an
`event_id_conflict`; each change keeps the earlier forms as further comparisons:
nested keys sorted (LEGACY_DIGESTS), then times put in UTC and properties' numbers
read by value (CANONICAL_DIGESTS: the pins below are the as-sent form's), and
consumers of `customer.churn-risk.v1` and `customer.health.v1` compare payloads
across replays. The expected values below were computed by the release that stored
the first digests; whatever changes inside the decoder, the pipeline or the scoring
core, these must not.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args, get_type_hints

import pytest
from pydantic import AwareDatetime, TypeAdapter

from healthscore.contracts import OrganizationProfile
from healthscore.core.effects import RaisedAlert
from healthscore.core.events import ProfileEvent, SupportEvent, UsageEvent
from healthscore.core.scoring.alerts import evaluate_alert
from healthscore.core.scoring.model import DAY, v2_model
from healthscore.core.scoring.score import record_score, score
from healthscore.core.scoring.state import OpenInteraction, OrganizationState
from healthscore.service.ingest import decode
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord, event_json
from healthscore.service.ingest.pipeline import (
    as_sent_payload_digest,
    legacy_payload_digest,
    payload_digest,
)
from healthscore.service.projector import Projected, health_message, project
from healthscore.store.effects_writer import alert_payload

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"
ORG = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"
NOW = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)

_USAGE: dict[str, Any] = {
    "event_id": "6f1c2a8e-53b4-4c1e-9a57-0d1e2f3a4b5c",
    "organization_id": ORG,
    "user_id": "2b1e4c6d-8f0a-4b2c-9d3e-5f6a7b8c9d0e",
    "type": "feature_used",
    "occurred_at": "2025-03-14T15:00:00.000Z",
    "quantity": 1,
    "feature": "calendar",
    "properties": {"area": "planning"},
}
_SUPPORT: dict[str, Any] = {
    "event_id": "7a2d3b9f-64c5-4d2f-8b68-1e2f3a4b5c6d",
    "organization_id": ORG,
    "interaction_id": "8b3e4c0a-75d6-4e3a-9c79-2f3a4b5c6d7e",
    "action": "opened",
    "interaction_type": "billing_inquiry",
    "channel": "email",
    "priority": "normal",
    "sentiment": "neutral",
    "subject": "Invoice question",
    "occurred_at": "2025-03-14T15:00:00Z",
}


def _body(base: dict[str, Any], drop: tuple[str, ...] = (), **changes: Any) -> bytes:
    body = {k: v for k, v in {**base, **changes}.items() if k not in drop}
    return json.dumps(body, ensure_ascii=False).encode()


# (topic, value) -> blake2b-128 hex of topic + NUL + the event as validated
PINNED: list[tuple[str, str, bytes, str]] = [
    ("usage", USAGE, _body(_USAGE), "2ed6e36c0a60d6e0c49c6c002c557974"),
    (
        "usage_required_only",
        USAGE,
        _body(_USAGE, drop=("user_id", "quantity", "feature", "properties"), type="login"),
        "4aae001eb1c3d5fc5c0d17ce4beaae7b",
    ),
    (
        "usage_offset_fraction",
        USAGE,
        _body(_USAGE, occurred_at="2025-03-14T20:29:59.5+05:30", quantity=250),
        "f6da4bc7bff8d6c5588a41dd11dce45b",
    ),
    (
        "usage_negative_zero_offset",
        USAGE,
        _body(_USAGE, occurred_at="2025-03-14T15:00:00.123456-00:00"),
        "60bbd939df2a9b741a17258bb6b3b33b",
    ),
    (
        "usage_numbers_and_text",
        USAGE,
        _body(
            _USAGE,
            feature="caf\u00e9 \U0001f600",
            properties={
                "floats": [1.0, 1e20, 1.5e-7, -0.0, 0.1 + 0.2, 1e16, 123456789.123, 5e-324],
                "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
                "text": 'tab\there "quoted" back\\slash /\u007f\u2028\u0001 \u00e9\U0001f600',
                "nested": {"a": [{"b": None, "c": True, "d": False}, [], {}]},
                "z": None,
            },
        ),
        "70825e81b76bc6f87f5a465f4105551e",
    ),
    (
        "usage_unknown_fields_ignored",
        USAGE,
        _body(_USAGE, campaign="spring", extra={"x": [1]}),
        "2ed6e36c0a60d6e0c49c6c002c557974",
    ),
    (
        # forms the fast path leaves to pydantic: no colon in the offset, lower-case z,
        # seven fractional digits
        "usage_fallback_offset",
        USAGE,
        _body(_USAGE, occurred_at="2025-03-14T20:30:00+0530"),
        "8e9337be17098c530948d8730221f30e",
    ),
    (
        "usage_fallback_lower_z",
        USAGE,
        _body(_USAGE, occurred_at="2025-03-14T15:00:00.25z"),
        "cd3ee1ba23c4b01785b213826acf57ff",
    ),
    (
        "usage_fallback_seven_digits",
        USAGE,
        _body(_USAGE, occurred_at="2025-03-14T15:00:00.1234567Z"),
        "60bbd939df2a9b741a17258bb6b3b33b",
    ),
    ("support", SUPPORT, _body(_SUPPORT), "665b98b66578df394af82e832c165bb4"),
    (
        "support_every_field",
        SUPPORT,
        _body(
            _SUPPORT,
            action="follow_up_scheduled",
            interaction_type="escalation",
            channel="video",
            priority="urgent",
            sentiment="very_negative",
            outcome="follow_up_required",
            assigned_to="9c4f5d1b-86e7-4f4b-8d8a-3a4b5c6d7e8f",
            subject='Ärger mit "Rechnungen" \U0001f621',
            follow_up_at="2025-03-20T09:00:00.000001+01:00",
            occurred_at="2025-03-14T16:00:00+01:00",
        ),
        "5995a1ec9a29c5cdf87cf0142c0a1a62",
    ),
    (
        "support_bare_update",
        SUPPORT,
        _body(
            _SUPPORT,
            drop=("interaction_type", "channel", "priority", "sentiment", "subject"),
            action="resolved",
        ),
        "a4b3cc8a845882ee804f169eab30903d",
    ),
    (
        "support_fallback_follow_up",
        SUPPORT,
        _body(_SUPPORT, action="follow_up_scheduled", follow_up_at="2025-03-20T09:00:00+0100"),
        "b8b447713517937c6c7a8340f72bd38f",
    ),
]


# Releases before 2026-12-04 digested nested objects in the order parsed; the pipeline
# still accepts a repeat under that digest (`legacy_payload_digest`). Where it differs:
LEGACY_DIGESTS = {"usage_numbers_and_text": "52209f86bcdd651706b224aa4021cde7"}
# Releases from 2026-12-04 until times were put in UTC and numbers read by value
# digested the values as sent (`as_sent_payload_digest`: the pins above); where the
# canonical digest differs (a time at a non-zero offset, an integral fraction):
CANONICAL_DIGESTS = {
    "usage_numbers_and_text": "9ac8a8a79bd741c818b0c54b68621ce0",
    "usage_offset_fraction": "b7939a6bf57e914c078f434514d9431b",
    "usage_fallback_offset": "2ed6e36c0a60d6e0c49c6c002c557974",
    "support_every_field": "8f6aba13f82861231ed41fc737325572",
    "support_fallback_follow_up": "1e77b85117d9f1307d60fa11e3ef9aca",
    "profile": "07ac087f9e8531599cdda211b555d802",
}


def _decode(decoder: Decoder, topic: str, value: bytes, offset: int = 0) -> Decoded:
    result = decoder.decode(RawRecord(topic, 0, offset, ORG.encode(), value, NOW_MS))
    assert isinstance(result, Decoded), result
    return result


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pydantic"])
@pytest.mark.parametrize(("name", "topic", "value", "digest"), PINNED, ids=[p[0] for p in PINNED])
def test_payload_digests_are_pinned(
    name: str, topic: str, value: bytes, digest: str, fast: bool
) -> None:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, fast=fast)
    decoded = _decode(decoder, topic, value)
    assert as_sent_payload_digest(decoded).hex() == digest
    assert payload_digest(decoded).hex() == CANONICAL_DIGESTS.get(name, digest)
    assert legacy_payload_digest(decoded).hex() == LEGACY_DIGESTS.get(name, digest)


def _reordered(value: Any, rng: random.Random) -> Any:
    """`value` with the keys of every object, at every depth, in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: _reordered(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [_reordered(item, rng) for item in value]
    return value


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pydantic"])
def test_a_repeat_with_its_keys_in_another_order_has_the_same_digest(fast: bool) -> None:
    rng = random.Random(7)
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, fast=fast)
    cases = _repeat_cases(20251204)
    reordered_nested = 0
    for topic, value in cases:
        original = _decode(decoder, topic, value)
        for _ in range(3):
            body = json.dumps(_reordered(json.loads(value), rng)).encode()
            repeat = _decode(decoder, topic, body)
            assert payload_digest(repeat) == payload_digest(original)
            reordered_nested += legacy_payload_digest(repeat) != legacy_payload_digest(original)
    assert reordered_nested >= 50  # the nested orders did change what was parsed (67 of 1,038)


def test_the_fallback_cases_take_the_fallback() -> None:
    for name, topic, value, _digest in PINNED:
        decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
        _decode(decoder, topic, value)
        assert (decoder.fallbacks == 1) == ("fallback" in name), name


PROFILE = "organization.profile.v1"
_PROFILE: dict[str, Any] = {
    "event_id": "9c5e6f1a-86f7-4a4b-9c8a-3b4c5d6e7f80",
    "organization_id": ORG,
    "created_at": "2023-04-01T00:00:00+02:00",
    "milestones": {
        "first_client_added": "2023-05-02T10:00:00.5Z",
        "onboarding_completed": "2023-04-20T00:00:00-00:00",
    },
    "occurred_at": "2025-03-14T15:00:00.000Z",
}
# profiles take the pydantic path only; a missing created_at or milestones digests as
# null and {} do
PROFILE_PINNED: list[tuple[str, bytes, str]] = [
    ("profile", _body(_PROFILE), "a3473451c35858bdda369179f37eb8ca"),
    (
        "profile_required_only",
        _body(_PROFILE, drop=("created_at", "milestones")),
        "84c57609c89e52bb66901099a378d2a5",
    ),
    (
        "profile_nulls_and_extra",
        _body(_PROFILE, created_at=None, milestones={}, source="crm"),
        "84c57609c89e52bb66901099a378d2a5",
    ),
]


@pytest.mark.parametrize(
    ("name", "value", "digest"), PROFILE_PINNED, ids=[p[0] for p in PROFILE_PINNED]
)
def test_profile_digests_are_pinned(name: str, value: bytes, digest: str) -> None:
    decoded = _decode(Decoder(USAGE, SUPPORT, 64 * 1024), PROFILE, value)
    assert as_sent_payload_digest(decoded).hex() == digest
    assert payload_digest(decoded).hex() == CANONICAL_DIGESTS.get(name, digest)
    validated = OrganizationProfile.model_validate_json(value)
    assert event_json(decoded.event) == validated.model_dump_json().encode()


def _repeat_cases(seed: int) -> list[tuple[str, bytes]]:
    """(topic, value) of every pinned record and 300 generated ones, to be repeated."""
    cases = [(topic, value) for _name, topic, value, _digest in PINNED]
    cases += [(PROFILE, value) for _name, value, _digest in PROFILE_PINNED]
    return cases + _generated(seed, 300)


def _generated(seed: int, count: int) -> list[tuple[str, bytes]]:
    """Varied valid events: properties of every JSON kind, timestamps at any offset."""
    rng = random.Random(seed)

    def leaf() -> Any:
        kind = rng.randrange(7)
        if kind == 0:
            return rng.uniform(-1e6, 1e6)
        if kind == 1:
            return rng.random() * 10.0 ** rng.randint(-30, 30)
        if kind == 2:
            return rng.randint(-(2**63), 2**64 - 1)
        if kind == 3:
            return "".join(
                rng.choice('ab é😀\n\t"\\/\x01\x7f\u2028') for _ in range(rng.randrange(8))
            )
        return rng.choice([None, True, False, 0, -0.0, 1.0])

    def value(depth: int) -> Any:
        if depth > 3 or rng.random() < 0.5:
            return leaf()
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {f"k{i}é": value(depth + 1) for i in range(rng.randrange(4))}

    def moment() -> str:
        at = NOW - timedelta(
            seconds=rng.randrange(0, 86400 * 400), microseconds=rng.randrange(10**6)
        )
        minutes = rng.randrange(-14 * 60, 14 * 60 + 1)
        local = at.astimezone(timezone(timedelta(minutes=minutes)))
        text = local.isoformat(timespec=rng.choice(["seconds", "milliseconds", "microseconds"]))
        return text.replace("+00:00", "Z") if rng.random() < 0.5 else text

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    records: list[tuple[str, bytes]] = []
    for _ in range(count):
        if rng.random() < 0.6:
            body: dict[str, Any] = {
                "event_id": uid(),
                "organization_id": ORG,
                "user_id": rng.choice([None, uid()]),
                "type": rng.choice(["login", "feature_used", "client_added", "seat_removed"]),
                "occurred_at": moment(),
                "quantity": rng.randint(1, 1_000_000),
                "feature": rng.choice([None, "calendar", "fórm 😀"]),
                "properties": rng.choice(
                    [None, {}, {f"p{i}": value(1) for i in range(rng.randrange(5))}]
                ),
            }
            for name in ("user_id", "quantity", "feature", "properties"):
                if rng.random() < 0.2:
                    del body[name]
            records.append((USAGE, json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()))
        else:
            action = rng.choice(["opened", "updated", "resolved", "follow_up_scheduled"])
            body = {
                "event_id": uid(),
                "organization_id": ORG,
                "interaction_id": uid(),
                "action": action,
                "interaction_type": rng.choice(["complaint", "escalation", "check_in"]),
                "channel": rng.choice(["email", "chat"]),
                "priority": rng.choice([None, "low", "urgent"]),
                "sentiment": rng.choice([None, "negative", "positive"]),
                "outcome": rng.choice([None, "resolved", "churned"]),
                "assigned_to": rng.choice([None, uid()]),
                "subject": rng.choice([None, "Ärger 😡", 'a "b" \\ c']),
                "follow_up_at": moment() if action == "follow_up_scheduled" else None,
                "occurred_at": moment(),
            }
            for name in ("priority", "sentiment", "outcome", "assigned_to", "subject"):
                if rng.random() < 0.3:
                    del body[name]
            records.append((SUPPORT, json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()))
    return records


GENERATED_DIGEST = "feb16445dcd2ab6023b70fada3ade741"  # as sent
GENERATED_CANONICAL_DIGEST = "5f591b3305584276560504c77832b3a1"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pydantic"])
def test_digests_of_generated_events_are_pinned(fast: bool) -> None:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, fast=fast)
    combined = hashlib.blake2b(digest_size=16)
    as_sent = hashlib.blake2b(digest_size=16)
    for offset, (topic, value) in enumerate(_generated(20250314, 600)):
        decoded = _decode(decoder, topic, value, offset)
        combined.update(payload_digest(decoded))
        as_sent.update(as_sent_payload_digest(decoded))
    assert combined.hexdigest() == GENERATED_CANONICAL_DIGEST
    assert as_sent.hexdigest() == GENERATED_DIGEST


def _as_relayed(value: Any) -> Any:
    """`value` as a JavaScript relay writes it back: a number by its value (`1.0` as
    `1`, `-0.0` as `0`), an empty object dropped (here: `properties`)."""
    if isinstance(value, dict):
        return {k: _as_relayed(v) for k, v in value.items() if v != {} or k != "properties"}
    if isinstance(value, list):
        return [_as_relayed(item) for item in value]
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _at_other_offsets(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`body` with every time the contract reads written at another offset, and its
    numbers as a JavaScript relay writes them."""
    moved: dict[str, Any] = _as_relayed(body)
    for name in ("occurred_at", "follow_up_at", "created_at"):
        if isinstance(moved.get(name), str):
            moved[name] = _at_another_offset(moved[name], rng)
    if isinstance(moved.get("milestones"), dict):
        moved["milestones"] = {
            name: _at_another_offset(at, rng) for name, at in moved["milestones"].items()
        }
    return moved


_TIME = TypeAdapter(AwareDatetime)


def _at_another_offset(text: str, rng: random.Random) -> str:
    minutes = rng.choice([-14 * 60, -330, 0, 60, 345, 14 * 60])
    at = _TIME.validate_python(text)  # as the contract reads it (`z`, `+0100`, ...)
    return at.astimezone(timezone(timedelta(minutes=minutes))).isoformat()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pydantic"])
def test_a_repeat_with_its_times_or_numbers_written_otherwise_has_the_same_digest(
    fast: bool,
) -> None:
    """A time is one instant at whatever offset it is written (the store keeps the
    instant), a JSON number its value (`1.0` is `1`), an empty `properties` none: a
    producer re-serializing an event in another zone, or a JavaScript relay, repeated
    it, and the repeat was dead-lettered as an `event_id_conflict`."""
    rng = random.Random(11)
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024, fast=fast)
    cases = _repeat_cases(20251205)
    moved = 0
    for topic, value in cases:
        original = _decode(decoder, topic, value)
        body = json.dumps(_at_other_offsets(json.loads(value), rng)).encode()
        repeat = _decode(decoder, topic, body)
        assert payload_digest(repeat) == payload_digest(original), body
        moved += as_sent_payload_digest(repeat) != as_sent_payload_digest(original)
    assert moved >= 250  # the offsets did change what was written
    # every time an event holds is one the canonical form puts in UTC
    times = {
        name
        for struct in (UsageEvent, SupportEvent, ProfileEvent)
        for name, hint in get_type_hints(struct).items()
        if datetime in (hint, *get_args(hint)) and name != "milestones"
    }
    assert times == set(decode._TIME_FIELDS)


# --------------------------------------------------------------------------- outputs

ALERT_ORG = "0b7c6f0e-3a1d-4c5e-8f9a-1b2c3d4e5f60"
ALERT_NOW = 1_790_000_000.0 // DAY * DAY


def _troubled() -> OrganizationState:
    """An established organization, quiet for 12 days, with an open escalation."""
    return OrganizationState(
        organization_id=ALERT_ORG,
        first_event_at=ALERT_NOW - 200 * DAY,
        last_event_at=ALERT_NOW - 12 * DAY,
        last_usage_at=ALERT_NOW - 12 * DAY,
        decay_ref=ALERT_NOW - 12 * DAY,
        decayed={"activity": 4.0, "logins": 1.0, "activity_baseline": 40.0, "activity_recent": 4.0},
        users={"u1": ALERT_NOW - 12 * DAY},
        open_interactions={
            "9d8c7b6a-5f4e-4d3c-8b2a-190807060504": OpenInteraction(
                opened_at=ALERT_NOW - 5 * DAY, interaction_type="escalation", priority="urgent"
            )
        },
        milestones={"onboarding_completed": ALERT_NOW - 190 * DAY},
    )


ALERT_PAYLOAD = (
    '{"alert_id":"28826cda-90ff-5003-8045-e3e8b9aa35b6","organization_id":"0b7c6f0e-3'
    'a1d-4c5e-8f9a-1b2c3d4e5f60","kind":"risk_raised","health_score":32.96,"previous_'
    'score":null,"health_status":"critical","churn_probability":0.947,"risk_level":"c'
    'ritical","risk_factors":[{"factor":"activity_decline","value":0.2703,"impact":-3'
    '3.15,"detail":"Recent activity is 27% of this organization\'s usual level."},{"fa'
    'ctor":"few_logins","value":0.552,"impact":-21.38,"detail":"Few recent logins (de'
    'cayed login count 0.6)."},{"factor":"missing_milestones","value":16.0,"impact":-'
    '5.86,"detail":"16 success milestones expected by now are missing, e.g. first_cli'
    'ent_added, profile_completed, clients_10."},{"factor":"open_interactions","value'
    '":1.0,"impact":-4.47,"detail":"1 support interaction is open."},{"factor":"unres'
    'olved_interaction_age","value":5.0,"impact":-1.1,"detail":"The oldest open suppo'
    'rt interaction is 5.0 days old."},{"factor":"open_escalations","value":1.0,"impa'
    'ct":-0.66,"detail":"1 open support interaction is escalated or urgent."},{"facto'
    'r":"minor_factors","value":1.0,"impact":-0.42,"detail":"1 smaller factor, under '
    '0.5 points: inactivity."}],"caused_by":["5f0e0c8a-1b2c-4d3e-8f4a-5b6c7d8e9f00"],'
    '"scored_at":"2026-09-21T00:00:00Z","emitted_at":"1970-01-01T00:00:00Z","trigger"'
    ':"probability_threshold","episode":1,"episode_id":"28826cda-90ff-5003-8045-e3e8b'
    '9aa35b6","score_model_version":"v2","path_to_healthy":[{"action":"bring product '
    'activity back to its usual level","factor":"activity_decline","impact":33.15,"in'
    'teraction_id":null},{"action":"get the team logging in regularly","factor":"few_'
    'logins","impact":21.38,"interaction_id":null}],"no_path_reason":null}'
)


def test_an_alert_payload_is_pinned() -> None:
    model = v2_model()  # pinned on v2's numbers: these tests pin the wire format, not a model
    state = _troubled()
    for hours in range(0, 24 * 8, 6):
        at = ALERT_NOW + hours * 3600
        health = score(state, at, model)
        decision = evaluate_alert(state, state.last_score, health, at, model)
        record_score(state, health, at)
        if decision is not None:
            alert = RaisedAlert(
                organization_id=ALERT_ORG,
                decision=decision,
                health=health,
                scored_at=at,
                caused_by=("5f0e0c8a-1b2c-4d3e-8f4a-5b6c7d8e9f00",),
            )
            assert alert_payload(alert) == ALERT_PAYLOAD
            return
    raise AssertionError("no alert")


HEALTH_MESSAGE = (
    b'{"organization_id":"0b7c6f0e-3a1d-4c5e-8f9a-1b2c3d4e5f60","health_score":32.96,"'
    b'previous_score":71.5,"health_status":"critical","churn_probability":0.947,"risk_'
    b'level":"critical","components":{"engagement":3.47,"adoption":0.0,"milestones":15'
    b'.81,"support":80.7,"growth":100.0},"risk_factors":[{"factor":"activity_decline",'
    b'"value":0.2703,"impact":-33.15,"detail":"Recent activity is 27% of this organiza'
    b'tion\'s usual level."},{"factor":"few_logins","value":0.552,"impact":-21.38,"deta'
    b'il":"Few recent logins (decayed login count 0.6)."},{"factor":"missing_milestone'
    b's","value":16.0,"impact":-5.86,"detail":"16 success milestones expected by now a'
    b're missing, e.g. first_client_added, profile_completed, clients_10."},{"factor":'
    b'"open_interactions","value":1.0,"impact":-4.47,"detail":"1 support interaction i'
    b's open."},{"factor":"unresolved_interaction_age","value":5.0,"impact":-1.1,"deta'
    b'il":"The oldest open support interaction is 5.0 days old."},{"factor":"open_esca'
    b'lations","value":1.0,"impact":-0.66,"detail":"1 open support interaction is esca'
    b'lated or urgent."},{"factor":"minor_factors","value":1.0,"impact":-0.42,"detail"'
    b':"1 smaller factor, under 0.5 points: inactivity."}],"score_model_version":"v2",'
    b'"scored_at":"2026-09-21T00:00:00+00:00","emitted_at":"2026-09-21T12:00:01.250000'
    b'+00:00"}'
)


def test_a_health_message_is_pinned() -> None:
    model = v2_model()
    state = _troubled()
    record_score(state, score(state, ALERT_NOW, model), ALERT_NOW)
    health = project(state, model)
    assert health is not None and health.risk_factors
    projected = Projected(uuid.UUID(ALERT_ORG), 3, state, health)
    emitted = datetime(2026, 9, 21, 12, 0, 1, 250000, tzinfo=UTC)
    assert health_message(projected, 71.5, model.version, emitted) == HEALTH_MESSAGE


def test_the_pinned_health_message_is_valid_as_published() -> None:
    # the feed's bytes against its JSON Schema, patterns and formats checked: a pattern
    # the service's own output fails would fail every consumer that validates
    import jsonschema

    from healthscore.contracts.export import render_schemas

    schema = json.loads(render_schemas()["customer.health.v1.json"])
    validator = jsonschema.validators.validator_for(schema)
    assert validator is jsonschema.Draft202012Validator  # picked by its `$schema`
    errors = list(
        validator(schema, format_checker=validator.FORMAT_CHECKER).iter_errors(
            json.loads(HEALTH_MESSAGE)
        )
    )
    assert errors == []
    wrong = {**json.loads(HEALTH_MESSAGE), "organization_id": "not-a-uuid"}
    assert not jsonschema.Draft202012Validator(schema).is_valid(wrong)  # no format checker
