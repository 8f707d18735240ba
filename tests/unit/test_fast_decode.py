"""The msgspec fast path of the decoder decides exactly as the pydantic contract does.

Every test decodes the same records with `Decoder(fast=True)` (the service's
decoder) and `Decoder(fast=False)` (the pydantic models alone) and requires
the same outcome: a rejection with the same reason and detail, or the same
event of the core whose fields, JSON and payload digest are equal, and whose
JSON is what pydantic's serializer writes for the contract model.
The fast path may leave a valid record to pydantic (it then decides), but it
must never accept what pydantic refuses, nor build another event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthscore.contracts import SupportEvent, UsageEvent
from healthscore.contracts.enums import (
    Channel,
    InteractionType,
    Outcome,
    Priority,
    Sentiment,
    SupportAction,
    UsageType,
)
from healthscore.core import events
from healthscore.core.events import Event
from healthscore.service.ingest import decode
from healthscore.service.ingest.decode import (
    Decoded,
    Decoder,
    RawRecord,
    Rejection,
    event_json,
    well_formed_escapes,
)
from healthscore.service.ingest.fastdecode import SupportWire, UsageWire, _check_mirrors
from healthscore.service.ingest.pipeline import payload_digest
from healthscore_lab.poison import poison_corpus
from healthscore_lab.simulator import SimulationConfig, generate, to_ms

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"
ORG = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"
NOW = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def _decoders() -> tuple[Decoder, Decoder]:
    return (
        Decoder(USAGE, SUPPORT, 64 * 1024, fast=True),
        Decoder(USAGE, SUPPORT, 64 * 1024, fast=False),
    )


FAST, REFERENCE = _decoders()


def _record(
    topic: str, key: bytes | None, value: bytes, now: datetime | None = NOW, offset: int = 0
) -> RawRecord:
    timestamp_ms = None if now is None else to_ms(now)
    return RawRecord(topic, 0, offset, key, value, timestamp_ms)


def assert_same_event(fast: Event, reference: Event) -> None:
    """Field by field: values and their types (a timestamp's tzinfo class aside)."""
    assert type(fast) is type(reference)
    assert fast == reference
    mine_fields = msgspec.structs.asdict(fast)
    reference_fields = msgspec.structs.asdict(reference)
    assert list(mine_fields) == list(reference_fields)
    for name, value in reference_fields.items():
        mine = mine_fields[name]
        assert mine == value, name
        assert type(mine) is type(value), name
        if isinstance(value, datetime):
            # pydantic's tzinfo is a pydantic_core.TzInfo, the fast path's a datetime.timezone
            assert mine.utcoffset() == value.utcoffset(), name
            assert mine.isoformat() == value.isoformat(), name
            assert mine.timestamp() == value.timestamp(), name
    assert event_json(fast) == event_json(reference)
    # the digest's bytes are what pydantic's serializer writes for the contract model
    model: type[UsageEvent | SupportEvent] = (
        UsageEvent if isinstance(reference, events.UsageEvent) else SupportEvent
    )
    if reference_fields.get("cleared"):
        reference_fields["cleared"] = list(reference_fields["cleared"])  # the model's list
    built = model.model_construct(**reference_fields)
    # a field added to the contract after digests were stored is left out when empty
    empty = (
        {"cleared"} if "cleared" in reference_fields and not reference_fields["cleared"] else None
    )
    assert event_json(reference) == model.__pydantic_serializer__.to_json(built, exclude=empty)


def decide(record: RawRecord) -> Decoded | Rejection:
    """Decode with both paths, require the same outcome, return the fast path's."""
    fast = FAST.decode(record)
    reference = REFERENCE.decode(record)
    assert type(fast) is type(reference), (fast, reference)
    if isinstance(reference, Rejection):
        assert isinstance(fast, Rejection)
        assert (fast.reason, fast.detail) == (reference.reason, reference.detail)
    else:
        assert isinstance(fast, Decoded)
        assert_same_event(fast.event, reference.event)
        assert payload_digest(fast) == payload_digest(reference)
        # what the batch groups and aligns by, carried from the decoder (the message key)
        for decoded in (fast, reference):
            assert decoded.organization == str(decoded.event.organization_id)
            assert decoded.event_time == decoded.event.occurred_at.timestamp()
    return fast


def took_fast_path(record: RawRecord) -> bool:
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    decoder.decode(record)
    return decoder.fallbacks == 0


# --------------------------------------------------------------------------- structure


def test_wire_structs_mirror_the_models() -> None:
    assert UsageWire.__struct_fields__ == tuple(UsageEvent.model_fields)
    assert SupportWire.__struct_fields__ == tuple(SupportEvent.model_fields)
    assert events.UsageEvent.__struct_fields__ == tuple(UsageEvent.model_fields)
    assert events.SupportEvent.__struct_fields__ == tuple(SupportEvent.model_fields)

    class Changed(UsageEvent):
        campaign: str | None = None

    with pytest.raises(RuntimeError, match="does not mirror"):
        _check_mirrors(UsageWire, Changed)


# --------------------------------------------------------------------------- poison corpus

CORPUS_CLOCKS = [
    (ORG, NOW),
    (str(uuid.UUID(int=12345, version=4)), NOW + timedelta(days=400)),
    (
        "ffffffff-ffff-4fff-bfff-ffffffffffff",
        datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=timezone(timedelta(hours=-5))),
    ),
    ("00000000-0000-4000-8000-000000000000", datetime(2001, 1, 1, tzinfo=UTC)),
]


@pytest.mark.parametrize(("org", "now"), CORPUS_CLOCKS)
def test_poison_corpus_gets_the_same_rejections(org: str, now: datetime) -> None:
    for case in poison_corpus(org, now):
        topic = USAGE if case.kind == "usage" else SUPPORT
        result = decide(_record(topic, case.key, case.value, now))
        assert isinstance(result, Rejection), case.name
        assert result.reason == case.expected_reason, (case.name, result.detail)


# --------------------------------------------------------------------------- simulator stream


def _simulated(events: int, seed: int, support_share: float) -> Iterator[RawRecord]:
    span = timedelta(days=20)
    config = SimulationConfig(
        start=NOW - span,
        organizations=40,
        events=events,
        seed=seed,
        span=span,
        duplicate_rate=0.02,
        malformed_rate=0.02,
        support_share=support_share,
    )
    timestamp = NOW
    for offset, message in enumerate(generate(config)):
        # as simulator.produce sends them: record time = event time (malformed: the last one)
        timestamp = message.occurred_at or timestamp
        topic = USAGE if message.topic_kind == "usage" else SUPPORT
        yield _record(topic, message.key, message.value, timestamp, offset)


@pytest.mark.parametrize(("seed", "support_share"), [(20240611, 0.08), (7, 0.5)])
def test_simulator_stream_decodes_the_same(seed: int, support_share: float) -> None:
    fast, _ = _decoders()
    records = list(_simulated(3000, seed, support_share))
    rejected = 0
    for record in records:
        decide(record)
        before = fast.fallbacks
        if isinstance(fast.decode(record), Decoded):
            assert fast.fallbacks == before  # every valid event took the fast path
        else:
            rejected += 1
    assert len(records) - rejected >= 3000
    assert rejected > 0


# --------------------------------------------------------------------------- edge cases


def _usage(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "6f1c2a8e-53b4-4c1e-9a57-0d1e2f3a4b5c",
        "organization_id": ORG,
        "user_id": "2b1e4c6d-8f0a-4b2c-9d3e-5f6a7b8c9d0e",
        "type": "feature_used",
        "occurred_at": "2025-03-14T15:00:00.000Z",
        "quantity": 1,
        "feature": "calendar",
        "properties": {"area": "planning"},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _MISSING}


def _support(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": "7a2d3b9f-64c5-4d2f-8b68-1e2f3a4b5c6d",
        "organization_id": ORG,
        "interaction_id": "8b3e4c0a-75d6-4e3a-9c79-2f3a4b5c6d7e",
        "action": "opened",
        "interaction_type": "billing_inquiry",
        "channel": "email",
        "priority": "normal",
        "sentiment": "neutral",
        "outcome": None,
        "assigned_to": None,
        "subject": "Invoice question",
        "follow_up_at": None,
        "occurred_at": "2025-03-14T15:00:00Z",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _MISSING}


_MISSING = object()
_FIVE_MINUTES_AHEAD = (NOW + timedelta(minutes=5)).isoformat()
_JUST_MORE = (NOW + timedelta(minutes=5, microseconds=1)).isoformat()


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


USAGE_EDGES: dict[str, dict[str, Any]] = {
    "valid": _usage(),
    "quantity_0": _usage(quantity=0),
    "quantity_1": _usage(quantity=1),
    "quantity_max": _usage(quantity=1_000_000),
    "quantity_over": _usage(quantity=1_000_001),
    "quantity_negative": _usage(quantity=-1),
    "quantity_true": _usage(quantity=True),
    "quantity_false": _usage(quantity=False),
    "quantity_float_whole": _usage(quantity=1.0),
    "quantity_float": _usage(quantity=2.5),
    "quantity_string": _usage(quantity="3"),
    "quantity_null": _usage(quantity=None),
    "quantity_missing": _usage(quantity=_MISSING),
    "quantity_huge": _usage(quantity=2**63 - 1),
    "user_null": _usage(user_id=None),
    "user_missing": _usage(user_id=_MISSING),
    "feature_null": _usage(feature=None),
    "feature_missing": _usage(feature=_MISSING),
    "feature_100": _usage(feature="f" * 100),
    "feature_101": _usage(feature="f" * 101),
    "feature_100_astral": _usage(feature="😀" * 100),
    "feature_101_astral": _usage(feature="😀" * 101),
    "feature_nul": _usage(feature="a\x00b"),
    "feature_empty": _usage(feature=""),
    "feature_bool": _usage(feature=True),
    "properties_null": _usage(properties=None),
    "properties_missing": _usage(properties=_MISSING),
    "properties_empty": _usage(properties={}),
    "properties_list": _usage(properties=[1]),
    "properties_string": _usage(properties="x"),
    "properties_nul_key": _usage(properties={"a\x00": 1}),
    "properties_nul_value": _usage(properties={"a": "b\x00"}),
    "properties_nested_nul": _usage(properties={"a": [{"b": ["c\x00"]}]}),
    "properties_nested_nul_key": _usage(properties={"a": {"\x00": 1}}),
    "properties_depth_32": _usage(properties=_nested(32)),
    "properties_depth_33": _usage(properties=_nested(33)),
    "properties_depth_32_list": _usage(properties={"a": [[[[]]], _nested(28)]}),
    "properties_scalar_at_33": _usage(properties={"a": _nested(31) | {"s": "x"}}),
    "properties_16_kib": _usage(properties={"n": "n" * (16 * 1024 - 8)}),
    "properties_16_kib_plus_1": _usage(properties={"n": "n" * (16 * 1024 - 7)}),
    "properties_mixed": _usage(properties={"i": 1, "f": 1.5, "b": True, "z": None, "l": [1]}),
    "event_id_upper": _usage(event_id="6F1C2A8E-53B4-4C1E-9A57-0D1E2F3A4B5C"),
    "event_id_simple": _usage(event_id="6f1c2a8e53b44c1e9a570d1e2f3a4b5c"),
    "event_id_braced": _usage(event_id="{6f1c2a8e-53b4-4c1e-9a57-0d1e2f3a4b5c}"),
    "event_id_urn": _usage(event_id="urn:uuid:6f1c2a8e-53b4-4c1e-9a57-0d1e2f3a4b5c"),
    "event_id_misplaced_hyphen": _usage(event_id="6f1c2a8e5-3b4-4c1e-9a57-0d1e2f3a4b5c"),
    "event_id_nil": _usage(event_id="00000000-0000-0000-0000-000000000000"),
    "event_id_int": _usage(event_id=12),
    "event_id_null": _usage(event_id=None),
    "organization_upper": _usage(organization_id=ORG.upper()),
    "type_upper": _usage(type="FEATURE_USED"),
    "type_null": _usage(type=None),
    "unknown_fields": _usage(extra={"x": [1, {"y": None}]}, campaign="spring", z=None),
    "only_required": {
        "event_id": "6f1c2a8e-53b4-4c1e-9a57-0d1e2f3a4b5c",
        "organization_id": ORG,
        "type": "login",
        "occurred_at": "2025-03-14T15:00:00Z",
    },
}

TIMESTAMPS = [
    "2025-03-14T15:00:00Z",
    "2025-03-14T15:00:00.5Z",
    "2025-03-14T15:00:00.123456Z",
    "2025-03-14T15:00:00.1234567Z",
    "2025-03-14T15:00:00.Z",
    "2025-03-14T15:00:00,5Z",
    "2025-03-14T15:00:00z",
    "2025-03-14t15:00:00Z",
    "2025-03-14 15:00:00Z",
    "2025-03-14T15:00:00+00:00",
    "2025-03-14T15:00:00-00:00",
    "2025-03-14T15:00:00+05:30",
    "2025-03-14T15:00:00+0530",
    "2025-03-14T15:00:00+05",
    "2025-03-14T15:00:00+01:60",
    "2025-03-14T15:00:00+23:59",
    "2025-03-14T15:00:00-23:59",
    "2025-03-14T15:00:00+24:00",
    "2025-03-14T15:00:00",
    "2025-03-14T15:00",
    "2025-03-14T15:00+01:00",
    "2025-03-14_15:00:00Z",
    "2025-03-14",
    "2025-03-14T24:00:00Z",
    "2025-03-14T15:00:60Z",
    "2025-02-29T15:00:00Z",
    "2024-02-29T15:00:00Z",
    "2025-13-01T15:00:00Z",
    "0000-01-01T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "1989-12-31T23:59:59.999999Z",
    "1990-01-01T00:00:00Z",
    "1990-01-01T00:59:59+01:00",
    "1989-12-31T23:00:00-01:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T13:59:59+14:00",
    "0001-01-01T14:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "9999-12-31T23:59:59.999999-14:00",
    "9999-12-31T09:59:59-14:00",
    "9999-12-31T10:00:00-14:00",
    "9999-12-31T23:59:59.999999Z",
    "20250314T150000Z",
    "2025-W11-5T15:00:00Z",
    "17000000000000000000",
    "1700000000",
    "yesterday",
    "",
    _FIVE_MINUTES_AHEAD,
    _JUST_MORE,
    (NOW + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=-3))).isoformat(),
    (NOW + timedelta(minutes=5, microseconds=1))
    .astimezone(timezone(timedelta(hours=9)))
    .isoformat(),
]
NON_STRING_TIMESTAMPS = [1700000000, 1.7e9, None, True, ["2025-03-14T15:00:00Z"]]

SUPPORT_EDGES: dict[str, dict[str, Any]] = {
    "valid": _support(),
    "opened_bare": _support(interaction_type=None, channel=None),
    "opened_no_channel": _support(channel=_MISSING),
    "updated_bare": _support(action="updated", interaction_type=None, channel=None),
    "follow_up": _support(action="follow_up_scheduled", follow_up_at="2025-03-20T09:00:00+01:00"),
    "follow_up_far": _support(action="follow_up_scheduled", follow_up_at="9999-12-31T23:59:59Z"),
    "follow_up_beyond": _support(
        action="follow_up_scheduled", follow_up_at="9999-12-31T23:59:59-00:01"
    ),
    "follow_up_missing": _support(action="follow_up_scheduled"),
    "follow_up_naive": _support(action="follow_up_scheduled", follow_up_at="2025-03-20T09:00:00"),
    "follow_up_number": _support(action="follow_up_scheduled", follow_up_at=1742461200),
    "follow_up_on_update": _support(action="updated", follow_up_at="2025-03-20T09:00:00Z"),
    "subject_500": _support(subject="s" * 500),
    "subject_501": _support(subject="s" * 501),
    "subject_nul": _support(subject="\x00"),
    "subject_missing": _support(subject=_MISSING),
    "assigned": _support(assigned_to="9c4f5d1b-86e7-4f4b-8d8a-3a4b5c6d7e8f"),
    # fields set to none by naming them; null is left out, as always
    "cleared": _support(action="updated", subject=None, cleared=["assigned_to", "subject"]),
    "cleared_empty": _support(action="updated", cleared=[]),
    "cleared_twice": _support(action="updated", subject=None, cleared=["subject", "subject"]),
    "cleared_and_set": _support(action="updated", cleared=["subject"]),
    "cleared_unknown": _support(action="updated", cleared=["channel"]),
    "cleared_not_a_list": _support(action="updated", cleared="assigned_to"),
    "assigned_bad": _support(assigned_to="staff-7"),
    "every_enum": _support(
        action="resolved", priority="urgent", sentiment="very_negative", outcome="churned"
    ),
    "bad_outcome": _support(outcome="done"),
    "action_missing": _support(action=_MISSING),
    "interaction_missing": _support(interaction_id=_MISSING),
    "unknown_fields": _support(tags=["a"], extra={"deep": [[["x"]]]}),
}


def _check_usage(body: dict[str, Any] | bytes, key: bytes | None = ORG.encode()) -> bool:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    record = _record(USAGE, key, value)
    decide(record)
    return took_fast_path(record)


@pytest.mark.parametrize("name", USAGE_EDGES)
def test_usage_edge_cases(name: str) -> None:
    _check_usage(USAGE_EDGES[name])


@pytest.mark.parametrize("name", SUPPORT_EDGES)
def test_support_edge_cases(name: str) -> None:
    record = _record(SUPPORT, ORG.encode(), json.dumps(SUPPORT_EDGES[name]).encode())
    decide(record)


def test_fields_are_set_to_none_by_naming_them_not_by_null() -> None:
    def decoded(name: str) -> Decoded | Rejection:
        record = _record(SUPPORT, ORG.encode(), json.dumps(SUPPORT_EDGES[name]).encode())
        return decide(record)

    named = decoded("cleared")
    assert isinstance(named, Decoded) and isinstance(named.event, events.SupportEvent)
    assert named.event.cleared == ("assigned_to", "subject")
    # null (the base body's outcome, assigned_to, follow_up_at) clears nothing
    plain = decoded("valid")
    assert isinstance(plain, Decoded) and isinstance(plain.event, events.SupportEvent)
    assert plain.event.cleared == ()
    # an empty list is none: the event digests as it did before the field existed
    empty = decoded("cleared_empty")
    before = decide(_record(SUPPORT, ORG.encode(), json.dumps(_support(action="updated")).encode()))
    assert isinstance(empty, Decoded) and isinstance(before, Decoded)
    assert payload_digest(empty) == payload_digest(before)
    for refused, field in (
        ("cleared_twice", "cleared"),
        ("cleared_and_set", "subject"),  # as the schema's if/then names it
        ("cleared_unknown", "cleared"),
        ("cleared_not_a_list", "cleared"),
    ):
        rejection = decoded(refused)
        assert isinstance(rejection, Rejection), refused
        assert rejection.detail.startswith(f"{field}"), rejection.detail


@pytest.mark.parametrize("timestamp", [*TIMESTAMPS, *NON_STRING_TIMESTAMPS])
def test_timestamps(timestamp: Any) -> None:
    _check_usage(_usage(occurred_at=timestamp))
    for action in ("follow_up_scheduled", "updated"):
        body = _support(action=action, follow_up_at=timestamp)
        decide(_record(SUPPORT, ORG.encode(), json.dumps(body).encode()))


def test_the_ordinary_cases_take_the_fast_path() -> None:
    assert _check_usage(USAGE_EDGES["valid"])
    assert _check_usage(USAGE_EDGES["only_required"])
    assert _check_usage(USAGE_EDGES["unknown_fields"])
    assert _check_usage(USAGE_EDGES["properties_depth_32"])
    # the contract's earliest year, 1990, as written (the offset aside); a time written
    # with an earlier year goes to pydantic, which refuses it
    assert _check_usage(_usage(occurred_at="1990-01-01T00:00:00Z"))
    assert _check_usage(_usage(occurred_at="1990-01-01T00:00:00+14:00"))
    assert not _check_usage(_usage(occurred_at="1989-12-31T23:00:00-01:00"))
    assert not _check_usage(_usage(occurred_at="0001-01-01T14:00:00+14:00"))
    assert _check_usage(_usage(occurred_at=_FIVE_MINUTES_AHEAD))
    assert not _check_usage(_usage(occurred_at=_JUST_MORE))
    assert not _check_usage(_usage(occurred_at="2025-03-14T15:00:00.1234567Z"))


RAW_BODIES = {
    # the same JSON is read by one parser (orjson) for both paths
    "big_int_property": b'"properties":{"n":123456789012345678901234567890}',
    "infinite_ignored": b'"extra":1e400',
    "lone_surrogate_ignored": b'"extra":"\\ud800"',
    "duplicate_quantity": b'"quantity":0,"quantity":5',
    "duplicate_quantity_bad_last": b'"quantity":5,"quantity":0',
    "escaped_nul": b'"feature":"a\\u0000b"',
    "escaped_text": b'"feature":"caf\\u00e9 \\ud83d\\ude00"',
    "quantity_exponent": b'"quantity":1e2',
    "quantity_negative_zero": b'"quantity":-0',
}


@pytest.mark.parametrize("name", RAW_BODIES)
def test_raw_json(name: str) -> None:
    body = json.dumps(_usage()).encode()
    _check_usage(body[:-1] + b"," + RAW_BODIES[name] + b"}")


def test_key_mismatch_and_missing_timestamp() -> None:
    other = b"11111111-1111-4111-8111-111111111111"
    result = decide(_record(USAGE, other, json.dumps(_usage()).encode()))
    assert isinstance(result, Rejection) and result.reason == "key_mismatch"
    # no record timestamp: judged against the wall clock (not near the boundary here)
    result = decide(_record(USAGE, ORG.encode(), json.dumps(_usage()).encode(), now=None))
    assert isinstance(result, Decoded)


# --------------------------------------------------------------------------- generated


def _uuid_text() -> st.SearchStrategy[Any]:
    value = st.uuids()
    return st.one_of(
        value.map(str),
        value.map(lambda u: str(u).upper()),
        value.map(lambda u: u.hex),
        value.map(lambda u: "{" + str(u) + "}"),
        value.map(lambda u: u.urn),
        value.map(lambda u: str(u)[:-1]),
        st.text(max_size=40),
        st.integers(),
        st.none(),
    )


_OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@st.composite
def _timestamp_text(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none()))
    if kind == 1:  # near the record time, on both sides of the five minutes
        moment = NOW + timedelta(microseconds=draw(st.integers(-(10**9), 4 * 10**8)))
        moment = moment.astimezone(draw(_OFFSETS))
    else:
        near = [date(1, 1, 1), date(1, 1, 2), date(9999, 12, 30), date(9999, 12, 31), NOW.date()]
        day = draw(
            st.one_of(
                st.sampled_from(near),
                st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
            )
        )
        seconds = draw(st.integers(0, 86_399))
        micro = draw(st.integers(0, 999_999))
        naive = datetime(day.year, day.month, day.day) + timedelta(
            seconds=seconds, microseconds=micro
        )
        moment = naive.replace(tzinfo=draw(_OFFSETS))
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    digits = draw(st.integers(0, 8))
    if digits:
        text += "." + f"{moment.microsecond:06d}{draw(st.integers(0, 99)):02d}"[:digits]
    offset = moment.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    suffix = f"{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    style = draw(st.integers(0, 9))
    if minutes == 0 and style < 4:
        suffix = draw(st.sampled_from(["Z", "z", "-00:00"]))
    elif style == 4:
        suffix = suffix.replace(":", "")
    elif style == 5:
        suffix = ""
    if draw(st.integers(0, 15)) == 0:
        text = text.replace("T", draw(st.sampled_from(["t", " "])))
    return text + suffix


def _text(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.text(max_size=8),
        st.text(alphabet=st.sampled_from("ab\x00😀é"), min_size=limit - 2, max_size=limit + 2),
        st.integers(),
    )


_JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.sampled_from('ab\x00é😀\n"\\'), max_size=6),
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(alphabet="ab\x00", max_size=2), children, max_size=3),
    ),
    max_leaves=12,
)


@st.composite
def _properties(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(_JSON)
    if kind == 1:
        return _nested(draw(st.integers(30, 34)))
    if kind == 2:
        return {"n": "n" * draw(st.integers(16 * 1024 - 10, 16 * 1024 - 5))}
    return draw(st.dictionaries(st.text(alphabet="ab\x00", max_size=3), _JSON, max_size=4))


def _field(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A body field: usually `value`, missing 1 time in 10."""
    return st.integers(0, 9).flatmap(lambda n: st.just(_MISSING) if n == 0 else value)


def _enum(values: type[StrEnum]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from([member.value for member in values]),
        st.sampled_from([member.value.upper() for member in values]),
        st.none(),
        st.integers(0, 3),
    )


def _weighted(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """Mostly (7 in 8) good values, so that enough bodies pass and acceptance is compared."""
    return st.integers(0, 7).flatmap(lambda n: other if n == 0 else good)


_GOOD_UUID = st.uuids().map(str)
_GOOD_TIME = st.integers(-(10**11), 2 * 10**8).map(
    lambda us: (NOW + timedelta(microseconds=us)).isoformat()
)


@st.composite
def usage_bodies(draw: st.DrawFn) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_id": draw(_weighted(_GOOD_UUID, _field(_uuid_text()))),
        "organization_id": ORG if draw(st.integers(0, 9)) else draw(_uuid_text()),
        "user_id": draw(_field(_weighted(_GOOD_UUID, _uuid_text()))),
        "type": draw(_weighted(st.sampled_from(list(UsageType)), _field(_enum(UsageType)))),
        "occurred_at": draw(_weighted(_GOOD_TIME, _field(_timestamp_text()))),
        "quantity": draw(
            _weighted(
                _field(st.integers(1, 1_000_000)),
                st.one_of(
                    st.integers(-2, 3),
                    st.integers(999_998, 1_000_002),
                    st.booleans(),
                    st.floats(-2, 3),
                    st.sampled_from([1.0, "1", None]),
                ),
            )
        ),
        "feature": draw(_field(_weighted(st.one_of(st.none(), st.text(max_size=20)), _text(100)))),
        "properties": draw(
            _field(_weighted(st.one_of(st.none(), st.just({"a": 1})), _properties()))
        ),
    }
    if draw(st.booleans()):
        fields[draw(st.sampled_from(["extra", "v", "Type"]))] = draw(_JSON)
    return {name: value for name, value in fields.items() if value is not _MISSING}


@st.composite
def support_bodies(draw: st.DrawFn) -> dict[str, Any]:
    def optional_enum(values: type[StrEnum]) -> Any:
        return draw(_field(_weighted(st.sampled_from([None, *values]), _enum(values))))

    fields: dict[str, Any] = {
        "event_id": draw(_weighted(_GOOD_UUID, _field(_uuid_text()))),
        "organization_id": ORG if draw(st.integers(0, 9)) else draw(_uuid_text()),
        "interaction_id": draw(_weighted(_GOOD_UUID, _field(_uuid_text()))),
        "action": draw(
            _weighted(st.sampled_from(list(SupportAction)), _field(_enum(SupportAction)))
        ),
        "interaction_type": optional_enum(InteractionType),
        "channel": optional_enum(Channel),
        "priority": optional_enum(Priority),
        "sentiment": optional_enum(Sentiment),
        "outcome": optional_enum(Outcome),
        "assigned_to": draw(_field(_weighted(st.one_of(st.none(), _GOOD_UUID), _uuid_text()))),
        "subject": draw(_field(_weighted(st.one_of(st.none(), st.text(max_size=20)), _text(500)))),
        "follow_up_at": draw(
            _field(_weighted(st.one_of(st.none(), _GOOD_TIME), _timestamp_text()))
        ),
        "occurred_at": draw(_weighted(_GOOD_TIME, _field(_timestamp_text()))),
    }
    if draw(st.booleans()):
        fields["extra"] = draw(_JSON)
    return {name: value for name, value in fields.items() if value is not _MISSING}


def _encode(body: dict[str, Any]) -> bytes:
    # json, not orjson: integers beyond 64 bits and astral text as \\u escapes too
    return json.dumps(body, ensure_ascii=bool(len(body) % 2)).encode()


_GENERATED = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_GENERATED
@given(usage_bodies())
def test_generated_usage_bodies(body: dict[str, Any]) -> None:
    decide(_record(USAGE, ORG.encode(), _encode(body)))


@_GENERATED
@given(support_bodies())
def test_generated_support_bodies(body: dict[str, Any]) -> None:
    decide(_record(SUPPORT, ORG.encode(), _encode(body)))


@_GENERATED
@given(_timestamp_text())
def test_generated_timestamps(timestamp: Any) -> None:
    decide(_record(USAGE, ORG.encode(), _encode(_usage(occurred_at=timestamp))))
    body = _support(action="follow_up_scheduled", follow_up_at=timestamp)
    decide(_record(SUPPORT, ORG.encode(), _encode(body)))


def test_generated_bodies_are_often_valid() -> None:
    """The generators reach acceptance, so acceptance is what they compare."""
    accepted = {USAGE: 0, SUPPORT: 0}

    @settings(max_examples=200, deadline=None, database=None)
    @given(usage_bodies(), support_bodies())
    def sample(usage: dict[str, Any], support: dict[str, Any]) -> None:
        for topic, body in ((USAGE, usage), (SUPPORT, support)):
            record = _record(topic, ORG.encode(), _encode(body))
            accepted[topic] += isinstance(FAST.decode(record), Decoded)

    sample()
    assert accepted[USAGE] > 10
    assert accepted[SUPPORT] > 10


def test_a_detail_never_carries_a_control_character() -> None:
    """A detail quotes the input (a refused UUID's character, a key's name); a raw line
    break in it split the x-error-detail header of a kcat `%h` line in two."""
    record = _record(SUPPORT, ORG.encode(), b"{}")
    rejection = Rejection(record, "invalid_uuid", "assigned_to: bad character '\n' at 3\x7f")
    assert rejection.detail == "assigned_to: bad character '\\x0a' at 3\\x7f"
    body = _support(assigned_to="9c4f5d1b-86e7-4f4b-8d8a-3a4b5c6d7e8\n")
    refused = decide(_record(SUPPORT, ORG.encode(), json.dumps(body).encode()))
    assert isinstance(refused, Rejection)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in refused.detail), refused.detail


def test_a_detail_locates_the_fault_inside_properties_and_names_every_field() -> None:
    """`properties: contains U+0000 at character 3` did not say which of a 16 KiB
    object's strings; a record missing two fields named one, "(+1 more)", and took a
    re-drive per error."""

    def detail(body: dict[str, Any], topic: str = USAGE) -> str:
        refused = decide(_record(topic, ORG.encode(), json.dumps(body).encode()))
        assert isinstance(refused, Rejection)
        return refused.detail

    nul = detail(_usage(properties={"a": "x", "b": {"c": ["ok", "ba\x00d"]}}))
    assert nul.startswith("properties: contains U+0000 at character 2 of b.c[1],"), nul
    key = detail(_usage(properties={"plan": {"odd key\x00": 1}}))
    assert 'of plan["odd key\\u0000"] (its name)' in key, key
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(40):
        inner["n"] = {}
        inner = inner["n"]
    assert f"(at {'.'.join(['n'] * 32)})" in detail(_usage(properties=deep))
    both = detail(_support(event_id=_MISSING, interaction_id=_MISSING), SUPPORT)
    assert "event_id: Field required" in both and "interaction_id: Field required" in both
    assert "more)" not in both


def test_properties_are_measured_before_they_are_walked() -> None:
    """A 64 KiB `properties` of thousands of members was walked member by member (its
    depth, its U+0000) before its size was taken: 26 ms a record, and any record may be
    that. Over 16 KiB it is refused for its size, whatever else it holds; within it the
    cheap look (the serialized text, the depth level by level) decides as the walk
    does, at the depth limit's edge and for a string that holds the text `\\u0000`."""

    def nested(levels: int) -> dict[str, Any]:
        top: dict[str, Any] = {}
        inner = top
        for _ in range(levels - 1):
            inner["n"] = {}
            inner = inner["n"]
        return top

    def decided(properties: dict[str, Any]) -> Decoded | Rejection:
        return decide(
            _record(USAGE, ORG.encode(), json.dumps(_usage(properties=properties)).encode())
        )

    big = decided({**{f"k{n}": [] for n in range(4000)}, "z": "a\x00b", "deep": nested(40)})
    assert isinstance(big, Rejection) and big.reason == "invalid_field"
    assert "bytes serialized; the limit is 16 KiB" in big.detail, big.detail
    assert isinstance(decided({"a": "x\\u0000y", "\\u0000": 1}), Decoded)
    assert isinstance(decided(nested(32)), Decoded)
    assert isinstance(decided({"a": [nested(30)]}), Decoded)
    for too_deep in (nested(33), {"a": [nested(31)]}, nested(300)):
        refused = decided(too_deep)
        assert isinstance(refused, Rejection) and refused.reason == "out_of_range", refused
    refused = decided({"a": ["ok", {"b": "x\x00"}]})
    assert isinstance(refused, Rejection) and refused.reason == "invalid_text"
    assert "of a[1].b" in refused.detail, refused.detail


def test_fields_the_contract_does_not_name_are_named_beside_the_event() -> None:
    """Ignored as the contract says, but told: a misspelled `qty` was lost in silence."""
    usage = decide(_record(USAGE, ORG.encode(), json.dumps(USAGE_EDGES["unknown_fields"]).encode()))
    assert isinstance(usage, Decoded) and usage.unknown == ("campaign", "extra", "z")
    body = _support(tags=["a"], **{"x" * 200: 1})
    support = decide(_record(SUPPORT, ORG.encode(), json.dumps(body).encode()))
    assert isinstance(support, Decoded) and support.unknown[0] == "tags"
    assert support.unknown[1].startswith("x") and len(support.unknown[1]) < 100  # cut
    plain = decide(_record(USAGE, ORG.encode(), json.dumps(_usage()).encode()))
    assert isinstance(plain, Decoded) and plain.unknown == ()
    many = decide(
        _record(
            USAGE, ORG.encode(), json.dumps(_usage(**{f"f{n:02d}": n for n in range(20)})).encode()
        )
    )
    assert isinstance(many, Decoded) and many.unknown == tuple(f"f{n:02d}" for n in range(8))


# --------------------------------------------------------------------------- lone surrogates

# JSON.stringify writes a lone UTF-16 surrogate (text cut inside an emoji: `.slice()`) as
# an escape, which JSON.parse and Ajv take; orjson refused the record as invalid_json. It
# is read as U+FFFD, as toWellFormed() and Go's encoding/json read it.
LONE_SURROGATES = {
    "high": (b"\\ud800", "\ufffd"),
    "low": (b"\\udc00", "\ufffd"),
    "reversed_pair": (b"\\ude00\\ud83d", "\ufffd\ufffd"),
    "emoji_cut_after_its_high_half": (b"\\uD83D", "\ufffd"),
}
_MARK = "LONE-SURROGATE-HERE"
_AT_MARK = f"x{_MARK}y"
# where the escape is put: (topic, body with the mark, what the decoded record holds there)
SURROGATE_PLACES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "subject": (SUPPORT, _support(subject=_AT_MARK), lambda d: d.event.subject),
    "feature": (USAGE, _usage(feature=_AT_MARK), lambda d: d.event.feature),
    "properties_value": (
        USAGE,
        _usage(properties={"note": [_AT_MARK]}),
        lambda d: d.event.properties["note"][0],
    ),
    "properties_name": (
        USAGE,
        _usage(properties={_AT_MARK: 1}),
        lambda d: next(iter(d.event.properties)),
    ),
    "unknown_field_value_usage": (USAGE, _usage(note=_AT_MARK), None),
    "unknown_field_value_support": (SUPPORT, _support(note={"a": _AT_MARK}), None),
    "unknown_field_name": (SUPPORT, _support(**{_AT_MARK: 1}), lambda d: d.unknown[0]),
}


def _with_escape(body: dict[str, Any], escape: bytes) -> bytes:
    value = json.dumps(body).encode()
    assert value.count(_MARK.encode()) == 1
    return value.replace(_MARK.encode(), escape)


@pytest.mark.parametrize("surrogate", LONE_SURROGATES)
@pytest.mark.parametrize("place", SURROGATE_PLACES)
def test_a_lone_surrogate_escape_is_read_as_the_replacement_character(
    place: str, surrogate: str
) -> None:
    topic, body, read = SURROGATE_PLACES[place]
    escape, replaced = LONE_SURROGATES[surrogate]
    value = _with_escape(body, escape)
    decoded = decide(_record(topic, ORG.encode(), value))  # both paths, the same event
    assert isinstance(decoded, Decoded), decoded
    assert decoded.record.value == value  # the record as sent
    if read is not None:
        assert read(decoded) == f"x{replaced}y"
    # the event is the one of the same text written with U+FFFD
    written = decide(_record(topic, ORG.encode(), _with_escape(body, replaced.encode())))
    assert isinstance(written, Decoded)
    assert_same_event(decoded.event, written.event)
    assert payload_digest(decoded) == payload_digest(written)


@pytest.mark.parametrize(
    ("escape", "text"),
    [
        (b"\\\\ud800", "\\ud800"),  # an escaped backslash, then text: no escape at all
        (b"\\\\\\ud800", "\\\ufffd"),  # an escaped backslash, then a lone surrogate
        (b"\\ud83d\\ude00", "\U0001f600"),  # a pair
        (b"\\uD83D\\uDE00", "\U0001f600"),
        (b"\\ud800\\ud800\\udc00", "\ufffd\U00010000"),  # a lone high, then a pair
        (b"\\u005cud800", "\\ud800"),  # a backslash written as an escape, then text
    ],
)
def test_escaped_backslashes_and_pairs_are_left_as_they_are(escape: bytes, text: str) -> None:
    value = _with_escape(_support(subject=_AT_MARK), escape)
    decoded = decide(_record(SUPPORT, ORG.encode(), value))
    assert isinstance(decoded, Decoded) and isinstance(decoded.event, events.SupportEvent)
    assert decoded.event.subject == f"x{text}y"
    repaired = well_formed_escapes(value)
    assert len(repaired) == len(value)
    if "\ufffd" not in text:
        assert repaired == value  # nothing to repair: nothing changed


def test_only_a_record_orjson_refused_for_a_surrogate_is_repaired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repaired: list[bytes] = []

    def counted(value: bytes) -> bytes:
        repaired.append(value)
        return well_formed_escapes(value)

    monkeypatch.setattr(decode, "well_formed_escapes", counted)
    decoder = Decoder(USAGE, SUPPORT, 64 * 1024)
    plain = json.dumps(_support(subject="caf\u00e9 \U0001f600")).encode()
    assert isinstance(decoder.decode(_record(SUPPORT, ORG.encode(), plain)), Decoded)
    truncated = decoder.decode(_record(SUPPORT, ORG.encode(), plain[:40]))
    assert isinstance(truncated, Rejection) and truncated.reason == "invalid_json"
    assert repaired == []
    lone = _with_escape(_support(subject=_AT_MARK), b"\\ud800")
    assert isinstance(decoder.decode(_record(SUPPORT, ORG.encode(), lone)), Decoded)
    assert repaired == [lone]


def test_a_repaired_record_refused_for_another_rule_keeps_its_bytes() -> None:
    # 500 characters and the half of an emoji: one character too many, as Ajv counts it
    long = _with_escape(_support(subject="s" * 500 + _MARK), b"\\ud83d")
    refused = decide(_record(SUPPORT, ORG.encode(), long))
    assert isinstance(refused, Rejection) and refused.reason == "out_of_range", refused
    assert refused.record.value == long  # what the dead letter carries: the bytes as sent
    # JSON broken after the escape: the error, at its place in the text as sent
    broken = _with_escape(_support(subject=_AT_MARK), b"\\ud800").replace(b"}", b",}")
    refused = decide(_record(SUPPORT, ORG.encode(), broken))
    assert isinstance(refused, Rejection) and refused.reason == "invalid_json"
    assert "surrogate" not in refused.detail
    assert f"(char {broken.index(b',}')})" in refused.detail, refused.detail  # the comma
    # two names that differ only in their lone surrogates are one name twice once read
    twice = json.dumps(_usage(properties={"aMARK1": 1, "aMARK2": 2})).encode()
    twice = twice.replace(b"MARK1", b"\\ud800").replace(b"MARK2", b"\\udc00")
    refused = decide(_record(USAGE, ORG.encode(), twice))
    assert isinstance(refused, Rejection) and refused.reason == "duplicate_key", refused
