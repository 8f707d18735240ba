"""A corpus of bad messages for the dead-letter path.

Each case is a message a careless or broken producer could send to one of the
two input topics, with the decoder's rejection reason code it must get
(`healthscore.service.ingest.decode.REASONS`). The simulator interleaves these with
valid events; the tests check every case against the real decoder.

Everything is deterministic for (organization_id, now): ids are uuid5 values
derived from the organization and the case name, and timestamps derive from
`now`, which should be the Kafka record timestamp the case is produced with
(the decoder judges "future" against the record timestamp).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

import orjson

_NAMESPACE = uuid5(NAMESPACE_URL, "https://healthscore.invalid/poison")

MAX_MESSAGE_BYTES = 64 * 1024
"""The decoder's default `max_message_bytes` (Settings)."""

STREAMED_CASES = 55
"""The simulator's malformed messages are drawn from this many first cases of
`poison_corpus`: the cases it held when the simulated streams were pinned
(tests/unit/test_simulator_pinned.py), so a case added later changes no stream and
no figure measured on one. Every case reaches the broker in the poison tests."""


@dataclass(frozen=True)
class PoisonCase:
    """One bad message and the reason code the decoder must give it."""

    name: str
    kind: Literal["usage", "support", "profile"]
    key: bytes | None
    value: bytes
    expected_reason: str


def _uuid(organization_id: str, label: str) -> str:
    return str(uuid5(_NAMESPACE, f"{organization_id}:{label}"))


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def poison_corpus(organization_id: str, now: datetime) -> list[PoisonCase]:
    """Every kind of bad message, for one organization, judged at `now`.

    `now` must be timezone-aware; `organization_id` must be a canonical UUID.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    org = str(UUID(organization_id))
    key = org.encode()
    occurred = _timestamp(now - timedelta(seconds=1))

    def u(name: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": _uuid(org, name),
            "organization_id": org,
            "user_id": _uuid(org, "user"),
            "type": "feature_used",
            "occurred_at": occurred,
            "quantity": 1,
            "feature": "calendar",
            "properties": {"area": "planning"},
        }
        body.update(changes)
        return body

    def s(name: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": _uuid(org, name),
            "organization_id": org,
            "interaction_id": _uuid(org, f"interaction:{name}"),
            "action": "opened",
            "interaction_type": "billing_inquiry",
            "channel": "email",
            "priority": "normal",
            "sentiment": "neutral",
            "outcome": None,
            "assigned_to": _uuid(org, "staff"),
            "subject": "Invoice question #101",
            "follow_up_at": None,
            "occurred_at": occurred,
        }
        body.update(changes)
        return body

    def without(body: dict[str, Any], *fields: str) -> dict[str, Any]:
        return {name: value for name, value in body.items() if name not in fields}

    cases: list[PoisonCase] = []

    def add(
        name: str,
        kind: Literal["usage", "support"],
        value: bytes | dict[str, Any],
        reason: str,
        message_key: bytes | None = key,
    ) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        cases.append(PoisonCase(name, kind, message_key, raw, reason))

    # framing: size, encoding, JSON
    add("empty_value", "usage", b"", "empty")
    add("truncated_json_object", "usage", orjson.dumps(u("truncated"))[:57], "invalid_json")
    add("invalid_utf8", "usage", b"\xff\xfe" + orjson.dumps(u("utf8"))[2:], "invalid_utf8")
    add("utf8_bom", "support", b"\xef\xbb\xbf" + orjson.dumps(s("bom")), "invalid_json")
    add("json_array", "usage", orjson.dumps([u("array")]), "not_an_object")
    add("json_string", "support", b'"opened"', "not_an_object")
    add("json_number", "usage", b"42", "not_an_object")
    add("json_null", "support", b"null", "not_an_object")
    oversized = u("oversized", properties={"blob": "x" * (MAX_MESSAGE_BYTES + 4096)})
    add("oversized_message", "usage", oversized, "too_large")

    # the message key
    add("missing_key", "usage", u("missing_key"), "missing_key", message_key=None)
    other = _uuid(org, "another-organization").encode()
    add("key_body_mismatch", "usage", u("mismatch"), "key_mismatch", message_key=other)
    add("support_key_body_mismatch", "support", s("mismatch"), "key_mismatch", message_key=other)
    add("key_not_uuid", "usage", u("key_not_uuid"), "invalid_key", message_key=b"acme-weddings")
    non_canonical = f"urn:uuid:{org}".encode()
    add("key_not_canonical", "usage", u("key_urn"), "invalid_key", message_key=non_canonical)
    add("key_empty", "support", s("key_empty"), "missing_key", message_key=b"")
    add(
        "occurred_at_as_number", "usage", u("numeric_time", occurred_at=1700000000), "invalid_field"
    )

    # required fields and ids
    add("usage_missing_event_id", "usage", without(u("x"), "event_id"), "missing_field")
    add(
        "usage_missing_organization_id",
        "usage",
        without(u("no_org"), "organization_id"),
        "missing_field",
    )
    add("usage_missing_occurred_at", "usage", without(u("no_time"), "occurred_at"), "missing_field")
    add("support_missing_event_id", "support", without(s("x"), "event_id"), "missing_field")
    add(
        "support_missing_interaction_id",
        "support",
        without(s("no_interaction"), "interaction_id"),
        "missing_field",
    )
    add("usage_event_id_not_uuid", "usage", u("x", event_id="evt-12345"), "invalid_uuid")
    add(
        "support_event_id_not_uuid",
        "support",
        s("x", event_id="0000-not-a-uuid-0000"),
        "invalid_uuid",
    )
    add("user_id_not_uuid", "usage", u("bad_user", user_id="user-42"), "invalid_uuid")

    # enumerations
    add("unknown_usage_type", "usage", u("bad_type", type="teleported"), "unknown_enum")
    add("unknown_support_action", "support", s("bad_action", action="escalated"), "unknown_enum")
    add(
        "unknown_interaction_type",
        "support",
        s("bad_interaction_type", interaction_type="small_talk"),
        "unknown_enum",
    )
    add("unknown_sentiment", "support", s("bad_sentiment", sentiment="furious"), "unknown_enum")
    add("unknown_channel", "support", s("bad_channel", channel="carrier_pigeon"), "unknown_enum")
    add("unknown_priority", "support", s("bad_priority", priority="asap"), "unknown_enum")
    add(
        "unknown_outcome",
        "support",
        s("bad_outcome", action="resolved", outcome="sorted"),
        "unknown_enum",
    )

    # types and ranges
    add("quantity_as_string", "usage", u("q_str", quantity="5"), "wrong_type")
    add("quantity_fractional", "usage", u("q_float", quantity=1.5), "wrong_type")
    add("quantity_boolean", "usage", u("q_bool", quantity=True), "wrong_type")
    add("quantity_zero", "usage", u("q_zero", quantity=0), "out_of_range")
    add("quantity_two_million", "usage", u("q_big", quantity=2_000_000), "out_of_range")
    add("feature_too_long", "usage", u("long_feature", feature="f" * 101), "out_of_range")
    add("feature_not_string", "usage", u("feature_int", feature=17), "wrong_type")
    add("properties_not_object", "usage", u("props_list", properties=["a", "b"]), "wrong_type")
    big_properties = u("big_properties", properties={"notes": "n" * (17 * 1024)})
    add("properties_over_16_kib", "usage", big_properties, "invalid_field")
    add("subject_too_long", "support", s("long_subject", subject="S" * 501), "out_of_range")
    # what PostgreSQL cannot store, refused at decode rather than by every retry
    add("subject_with_nul", "support", s("nul_subject", subject="Invoice\u0000 #7"), "invalid_text")
    add("feature_with_nul", "usage", u("nul_feature", feature="cal\u0000endar"), "invalid_text")
    add(
        "properties_with_nul",
        "usage",
        u("nul_properties", properties={"note": ["a\u0000b"]}),
        "invalid_text",
    )
    # about 3 KB; deeper than the serializer recurses, so built as text
    shallow = orjson.dumps(u("deep_properties", properties={}))
    deep = shallow.replace(
        b'"properties":{}', b'"properties":' + b'{"a":' * 400 + b"{}" + b"}" * 400
    )
    add("properties_nested_400_deep", "usage", deep, "out_of_range")

    # timestamps
    future = _timestamp(now + timedelta(days=1))
    add("usage_far_future", "usage", u("future", occurred_at=future), "future_timestamp")
    add("support_far_future", "support", s("future", occurred_at=future), "future_timestamp")
    naive = (now - timedelta(seconds=1)).astimezone(UTC).replace(tzinfo=None).isoformat()
    add("naive_timestamp", "usage", u("naive", occurred_at=naive), "invalid_field")
    add(
        "unparseable_timestamp",
        "usage",
        u("garbage_time", occurred_at="yesterday"),
        "invalid_field",
    )
    add(
        "occurred_at_utc_before_year_1",
        "usage",
        u("year_zero", occurred_at="0001-01-01T00:00:00+14:00"),
        "out_of_range",
    )
    add(
        "follow_up_at_utc_after_year_9999",
        "support",
        s(
            "year_10000",
            action="follow_up_scheduled",
            follow_up_at="9999-12-31T23:59:59-14:00",
        ),
        "out_of_range",
    )
    add(
        "naive_follow_up_at",
        "support",
        s("naive_follow_up", action="follow_up_scheduled", follow_up_at=naive),
        "invalid_field",
    )

    # support action requirements
    add(
        "opened_without_type_and_channel",
        "support",
        s("opened_bare", interaction_type=None, channel=None),
        "missing_field",
    )
    add(
        "opened_without_channel",
        "support",
        without(s("opened_no_channel"), "channel"),
        "missing_field",
    )
    add(
        "follow_up_without_follow_up_at",
        "support",
        s("follow_up_bare", action="follow_up_scheduled"),
        "missing_field",
    )
    # added after the streams were pinned (the simulator draws from the cases before,
    # STREAMED_CASES): a key twice in one object, whose value this parser and others
    # would take from different places
    other_org = _uuid(org, "another-organization")
    add(
        "organization_id_twice",
        "usage",
        b'{"organization_id":"' + other_org.encode() + b'",' + orjson.dumps(u("org_twice"))[1:],
        "duplicate_key",
    )
    add(
        "event_id_twice_escaped",
        "support",
        orjson.dumps(s("id_twice"))[:-1]
        + b',"\\u0065vent_id":"'
        + _uuid(org, "x").encode()
        + b'"}',
        "duplicate_key",
    )
    add(
        "properties_key_twice",
        "usage",
        orjson.dumps(u("props_twice", properties={"plan": "basic"})).replace(
            b'"plan":"basic"', b'"plan":"basic","plan":"premium"'
        ),
        "duplicate_key",
    )
    add(
        "key_twice_pretty_printed",
        "support",
        orjson.dumps(s("pretty_twice"), option=orjson.OPT_INDENT_2).replace(
            b'"priority": "normal"', b'"priority": "normal",\n  "priority" : "urgent"'
        ),
        "duplicate_key",
    )
    # an unknown field nested past where Python's json gives up (about 1,000 levels;
    # orjson reads 1,024): the repeat beside it went unseen
    add(
        "organization_id_twice_beside_deep_nesting",
        "usage",
        b'{"organization_id":"'
        + other_org.encode()
        + b'","trace":'
        + b"[" * 1000
        + b"]" * 1000
        + b","
        + orjson.dumps(u("org_twice_deep"))[1:],
        "duplicate_key",
    )
    # an integer orjson reads as a float (beyond 64 bits): out of range, not "no integer"
    add(
        "quantity_beyond_64_bits",
        "usage",
        orjson.dumps(u("q_huge")).replace(b'"quantity":1,', b'"quantity":100000000000000000000,'),
        "out_of_range",
    )
    # the nil UUID, what an unset id serializes to: taken, every event sent without an
    # id would be one event (the first counted, the rest duplicates or conflicts), and
    # every organization, interaction or user without one a single one
    nil = "00000000-0000-0000-0000-000000000000"
    add("usage_event_id_nil", "usage", u("nil_event", event_id=nil), "invalid_uuid")
    add(
        "organization_id_nil",
        "usage",
        u("nil_org", organization_id=nil),
        "invalid_uuid",
        message_key=nil.encode(),
    )
    add("user_id_nil", "usage", u("nil_user", user_id=nil), "invalid_uuid")
    add("interaction_id_nil", "support", s("nil_interaction", interaction_id=nil), "invalid_uuid")
    add("assigned_to_nil", "support", s("nil_assignee", assigned_to=nil), "invalid_uuid")
    # a lone surrogate escape (JSON.stringify of text cut inside an emoji) is read as
    # U+FFFD: a record refused for something else keeps its bytes as sent in the dead
    # letter; two names that differ only in their lone surrogates are one name twice
    add(
        "subject_too_long_with_a_lone_surrogate",
        "support",
        orjson.dumps(s("long_lone", subject="x" * 500)).replace(
            b'"subject":"' + b"x" * 500, b'"subject":"' + b"x" * 500 + b"\\ud83d"
        ),
        "out_of_range",
    )
    add(
        "properties_names_differing_in_lone_surrogates",
        "usage",
        orjson.dumps(u("lone_names", properties={"note": 1})).replace(
            b'"note":1', b'"note\\ud800":1,"note\\udc00":2'
        ),
        "duplicate_key",
    )
    return cases


MISROUTED_USAGE = "profile_misrouted_usage_event"
"""The profile corpus's case that is a valid `product.usage.v1` event (a login)."""


def profile_poison_corpus(organization_id: str, now: datetime) -> list[PoisonCase]:
    """Bad `organization.profile.v1` messages, for one organization, judged at `now`.

    Apart from `poison_corpus`, whose order the simulator's draws depend on.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    org = str(UUID(organization_id))
    key = org.encode()
    occurred = now - timedelta(seconds=1)

    def p(name: str, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "event_id": _uuid(org, f"profile:{name}"),
            "organization_id": org,
            "created_at": _timestamp(occurred - timedelta(days=700)),
            "milestones": {"onboarding_completed": _timestamp(occurred - timedelta(days=680))},
            "occurred_at": _timestamp(occurred),
        }
        body.update(changes)
        return body

    later = _timestamp(occurred + timedelta(days=1))
    naive = occurred.astimezone(UTC).replace(tzinfo=None).isoformat()
    other = _uuid(org, "another-organization").encode()
    raw: list[tuple[str, dict[str, Any], str, bytes | None]] = [
        ("profile_key_body_mismatch", p("mismatch"), "key_mismatch", other),
        ("profile_event_id_null", {**p("x"), "event_id": None}, "invalid_uuid", key),
        ("profile_missing_occurred_at", {k: v for k, v in p("t").items() if k != "occurred_at"},
         "missing_field", key),
        ("profile_unknown_milestone", p("m", milestones={"went_viral": _timestamp(occurred)}),
         "unknown_enum", key),
        ("profile_milestones_as_list", p("l", milestones=["onboarding_completed"]),
         "wrong_type", key),
        ("profile_created_after_occurred_at", p("c", created_at=later), "invalid_field", key),
        ("profile_milestone_after_occurred_at",
         p("a", milestones={"first_client_added": later}), "invalid_field", key),
        ("profile_naive_created_at", p("n", created_at=naive), "invalid_field", key),
        ("profile_created_at_as_number", p("num", created_at=1_600_000_000), "invalid_field", key),
        ("profile_created_at_utc_before_year_1",
         p("y", created_at="0001-01-01T00:00:00+14:00"), "out_of_range", key),
        ("profile_far_future", p("f", occurred_at=_timestamp(now + timedelta(days=1))),
         "future_timestamp", key),
        # another topic's events sent here: as empty profiles they claimed their ids
        (MISROUTED_USAGE, {"event_id": _uuid(org, "profile:misrouted-usage"),
                           "organization_id": org, "type": "login",
                           "occurred_at": _timestamp(occurred)}, "invalid_field", key),
        ("profile_misrouted_support_event",
         {"event_id": _uuid(org, "profile:misrouted-support"), "organization_id": org,
          "interaction_id": _uuid(org, "profile:misrouted-interaction"), "action": "opened",
          "interaction_type": "check_in", "channel": "email",
          "occurred_at": _timestamp(occurred)}, "invalid_field", key),
        ("profile_organization_id_nil",
         p("nil", organization_id="00000000-0000-0000-0000-000000000000"), "invalid_uuid",
         b"00000000-0000-0000-0000-000000000000"),
        # more names than there are milestone types (each one an error to build)
        ("profile_thousands_of_milestones",
         p("many", milestones={f"m{i}": _timestamp(occurred) for i in range(500)}),
         "out_of_range", key),
    ]  # fmt: skip
    return [
        PoisonCase(name, "profile", message_key, orjson.dumps(body), reason)
        for name, body, reason, message_key in raw
    ]
