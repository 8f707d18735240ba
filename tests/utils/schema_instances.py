"""Instances of the published JSON Schemas: valid ones (a full instance per topic, times
in every RFC 3339 spelling), and near-misses, mutated from a valid one field by field.

What a producer's CI checks is the schema file in `schema/contracts/`, so that file
(not the pydantic model) is what instances are generated from and judged by. Two
validators judge: one asserting `format` (uuid, date-time), and one as JSON Schema
2020-12 does by default, where `format` is an annotation only; the schema must hold
under both.

A few rules JSON Schema cannot say: the clock (`occurred_at` at most 5 minutes after
the record's time), a time's UTC value within years 1-9999 when its local date is,
a profile's times not after its `occurred_at`, and `properties` at most 16 KiB
serialized and 32 levels deep. `beyond_the_schema` names the reason such a
schema-valid instance gets; nothing else may be refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from healthscore.contracts._common import MAX_FUTURE_SKEW, MAX_PROPERTIES_DEPTH
from healthscore.contracts.export import default_schema_dir
from healthscore.contracts.usage import MAX_PROPERTIES_BYTES
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord, Rejection, event_json
from healthscore.service.ingest.pipeline import payload_digest
from healthscore_lab.simulator import to_ms

USAGE = "product.usage.v1"
SUPPORT = "support.interactions.v1"
PROFILE = "organization.profile.v1"
TOPICS = (USAGE, SUPPORT, PROFILE)

# the record's timestamp every instance is judged against (a replay's clock: fixed)
RECEIVED_AT = datetime(2025, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def schema_of(topic: str) -> dict[str, Any]:
    """The published JSON Schema of `topic`, as a producer's CI reads it."""
    return dict(json.loads((default_schema_dir() / f"{topic}.json").read_text()))


@dataclass(frozen=True)
class Judges:
    """The schema of one topic under both readings of `format`."""

    asserting: Draft202012Validator
    annotating: Draft202012Validator

    def errors(self, instance: Any) -> list[ValidationError]:
        """The errors of the validator asserting formats (a superset of the other's)."""
        return list(self.asserting.iter_errors(instance))

    def agree(self, instance: Any) -> bool:
        """The verdict, required to be the same under both readings."""
        asserting = bool(self.asserting.is_valid(instance))
        annotating = bool(self.annotating.is_valid(instance))
        assert asserting == annotating, (
            f"the schema decides {instance!r} by `format` alone (valid when formats are "
            f"annotations: {annotating}): a producer's CI that does not assert formats "
            "would pass it"
        )
        return asserting


def judges(topic: str) -> Judges:
    schema = schema_of(topic)
    Draft202012Validator.check_schema(schema)
    # jsonschema checks date-time only with rfc3339-validator installed (a dev dependency)
    assert {"uuid", "date-time"} <= set(FormatChecker().checkers)
    return Judges(
        Draft202012Validator(schema, format_checker=_FORMATS),
        Draft202012Validator(schema),
    )


_FORMATS = FormatChecker()


@_FORMATS.checks("date-time")
def _date_time(instance: object) -> bool:
    """jsonschema's date-time (rfc3339-validator), which knows no leap second: RFC 3339's
    `23:59:60` is checked as `23:59:59` (the service takes it at 23:59 UTC)."""
    if not isinstance(instance, str):
        return True
    if instance[13:19] == ":59:60":
        instance = f"{instance[:17]}59{instance[19:]}"
    return bool(FormatChecker().conforms(instance, "date-time"))


def named_fields(errors: list[ValidationError]) -> set[str]:
    """The top-level fields the schema's errors name (a missing one included)."""
    names: set[str] = set()
    for error in errors:
        for leaf in _leaves(error):
            if leaf.absolute_path:
                names.add(str(leaf.absolute_path[0]))
            elif leaf.validator == "required":
                names.add(str(leaf.message).split("'")[1])
            elif leaf.validator == "propertyNames":
                names.add(str(leaf.instance))
    return names


def _leaves(error: ValidationError) -> list[ValidationError]:
    if error.context:
        return [leaf for sub in error.context for leaf in _leaves(sub)]
    return [error]


# --------------------------------------------------------------------------- valid instances


def _rfc3339(utc: datetime, offset_minutes: int, digits: int, sep: str, zulu: str) -> str:
    """`utc` at `offset_minutes` in one of RFC 3339's spellings."""
    local = utc + timedelta(minutes=offset_minutes)
    text = local.strftime("%Y-%m-%d") + sep + local.strftime("%H:%M:%S")
    if digits:
        text += "." + f"{local.microsecond:06d}{'0' * digits}"[:digits]
    if offset_minutes == 0 and zulu:
        return text + zulu
    sign = "+" if offset_minutes >= 0 else "-"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def rfc3339_texts(latest: datetime) -> st.SearchStrategy[str]:
    """RFC 3339 timestamps up to `latest` (UTC), in every spelling the grammar allows:
    `T`/`t`, `Z`/`z`/`+00:00`/`-00:00`, offsets to ±23:59, 0 to 9 fractional digits;
    the UTC value and the local date both within years 1990-9999 (a day inside)."""
    return st.builds(
        _rfc3339,
        st.datetimes(
            min_value=datetime(1990, 1, 2),
            max_value=min(latest.replace(tzinfo=None), datetime(9999, 12, 30)),
            timezones=st.just(UTC),
        ),
        st.one_of(st.just(0), st.integers(-(23 * 60 + 59), 23 * 60 + 59)),
        st.integers(0, 9),
        st.sampled_from("Tt"),
        st.sampled_from(["Z", "z", ""]),
    )


# --------------------------------------------------------------------------- decoding

FAST = Decoder(USAGE, SUPPORT, 64 * 1024, profile_topic=PROFILE, fast=True)
REFERENCE = Decoder(USAGE, SUPPORT, 64 * 1024, profile_topic=PROFILE, fast=False)
JUDGES = {topic: judges(topic) for topic in TOPICS}


ORG = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"
TS = "2025-03-01T09:30:00.250Z"

# One full instance per topic (every optional field set) and the support actions with
# rules of their own; the near misses change one field of one of them.
BASES: list[tuple[str, dict[str, Any]]] = [
    (
        USAGE,
        {
            "event_id": "8a8f0f6e-1a43-4c0e-9a5e-0d6f2b7f1c01",
            "organization_id": ORG,
            "user_id": "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "type": "feature_used",
            "occurred_at": TS,
            "quantity": 3,
            "feature": "invoices",
            "properties": {"plan": "pro", "seats": 4, "tags": ["a", 1.5, None, True]},
        },
    ),
    (
        SUPPORT,
        {
            "event_id": "8a8f0f6e-1a43-4c0e-9a5e-0d6f2b7f1c02",
            "organization_id": ORG,
            "interaction_id": "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a090",
            "action": "opened",
            "interaction_type": "complaint",
            "channel": "email",
            "priority": "high",
            "sentiment": "negative",
            "outcome": None,
            "assigned_to": "5d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
            "subject": "Invoices do not send",
            "follow_up_at": None,
            "occurred_at": TS,
        },
    ),
    (
        SUPPORT,
        {
            "event_id": "8a8f0f6e-1a43-4c0e-9a5e-0d6f2b7f1c03",
            "organization_id": ORG,
            "interaction_id": "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a090",
            "action": "follow_up_scheduled",
            "follow_up_at": "2025-03-20T10:00:00+01:00",
            "occurred_at": TS,
        },
    ),
    (
        SUPPORT,
        {
            "event_id": "8a8f0f6e-1a43-4c0e-9a5e-0d6f2b7f1c05",
            "organization_id": ORG,
            "interaction_id": "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a090",
            "action": "updated",
            "priority": "high",
            "cleared": ["assigned_to", "sentiment"],
            "occurred_at": TS,
        },
    ),
    (
        PROFILE,
        {
            "event_id": "8a8f0f6e-1a43-4c0e-9a5e-0d6f2b7f1c04",
            "organization_id": ORG,
            "created_at": "2023-05-01T00:00:00Z",
            "milestones": {"first_client_added": "2023-06-01T12:00:00-04:00"},
            "occurred_at": TS,
        },
    ),
]


_HYPHENATED = re.compile("-".join(f"[0-9a-fA-F]{{{n}}}" for n in (8, 4, 4, 4, 12))).fullmatch


def _record(topic: str, body: dict[str, Any]) -> RawRecord:
    organization = body.get("organization_id")
    # the key as a producer writes it: the body's organization in canonical lowercase
    # (the AsyncAPI key binding; the body alone is under test here), or the base's
    key = ORG
    if isinstance(organization, str) and _HYPHENATED(organization):
        key = organization.lower()
    return RawRecord(topic, 0, 0, key.encode(), orjson.dumps(body), to_ms(RECEIVED_AT))


def decide(topic: str, body: dict[str, Any]) -> Decoded | Rejection:
    """Decode with the fast and the pydantic path; require the same outcome."""
    record = _record(topic, body)
    fast, reference = FAST.decode(record), REFERENCE.decode(record)
    if isinstance(reference, Rejection):
        assert isinstance(fast, Rejection), (body, fast)
        assert (fast.reason, fast.detail) == (reference.reason, reference.detail)
        return reference
    assert isinstance(fast, Decoded), (body, fast)
    assert fast.event == reference.event
    assert msgspec.structs.asdict(fast.event) == msgspec.structs.asdict(reference.event)
    assert event_json(fast.event) == event_json(reference.event)
    assert payload_digest(fast) == payload_digest(reference)
    return reference


# --------------------------------------------------------------------------- beyond the schema


def _parse(text: str) -> datetime:
    """An RFC 3339 text this module generated, as a datetime (fraction cut to 6 digits)."""
    upper = text.upper()
    if upper[16:19] == ":60":  # a leap second: its minute's last second will do here
        upper = f"{upper[:17]}59{upper[19:]}"
    head, sep, rest = upper.partition(".")
    if sep:
        zone = rest.lstrip("0123456789")
        digits = rest[: len(rest) - len(zone)]
        upper = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(upper.replace("Z", "+00:00"))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _times(topic: str, body: dict[str, Any]) -> list[str]:
    names = {USAGE: ("occurred_at",), SUPPORT: ("occurred_at", "follow_up_at")}.get(
        topic, ("occurred_at", "created_at")
    )
    times = [body.get(name) for name in names]
    if topic == PROFILE and isinstance(body.get("milestones"), dict):
        times.extend(body["milestones"].values())
    return [t for t in times if isinstance(t, str)]


def beyond_the_schema(topic: str, body: dict[str, Any]) -> str | None:
    """The reason a schema-valid `body` is refused by a rule JSON Schema cannot say, or
    None when it is to be applied."""
    for text in _times(topic, body):
        try:
            _parse(text).astimezone(UTC)
        except OverflowError:
            return "out_of_range"  # a local date in years 1-9999, its UTC value not
        if text[16:19] == ":60" and _parse(text).astimezone(UTC).strftime("%H:%M") != "23:59":
            return "invalid_field"  # a leap second is 23:59:60 UTC
    occurred_at = _parse(body["occurred_at"])
    if occurred_at - RECEIVED_AT > MAX_FUTURE_SKEW:
        return "future_timestamp"
    if topic == PROFILE:
        times = [body.get("created_at"), *(body.get("milestones") or {}).values()]
        if any(t is not None and _parse(t) > occurred_at for t in times):
            return "invalid_field"
    properties = body.get("properties") if topic == USAGE else None
    if isinstance(properties, dict):
        if _has_nul(properties):
            return "invalid_text"  # U+0000 in a free-form object: not in the schema
        if _depth(properties) > MAX_PROPERTIES_DEPTH:
            return "out_of_range"
        if len(orjson.dumps(properties)) > MAX_PROPERTIES_BYTES:
            return "invalid_field"
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


# What the service reads beyond the schemas' forms (it accepted them before the schemas
# said their forms; refusing them now would break producers that send them): ids in
# braces, as `urn:uuid:` or 32 bare digits, times with a space for `T`, an offset
# without its colon or a decimal comma. Never sent by a producer that validates.
_LENIENT_UUID = re.compile(
    r"\{[0-9a-fA-F-]{36}\}|urn:uuid:[0-9a-fA-F-]{36}|[0-9a-fA-F]{32}"
).fullmatch
_LENIENT_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})"
).fullmatch


def read_beyond_the_schema(value: Any) -> bool:
    """Whether `value` is one of the spellings the service reads beyond the schemas."""
    return isinstance(value, str) and bool(_LENIENT_UUID(value) or _LENIENT_TIME(value))
