"""Turn one raw Kafka record into a valid event of the core or a specific rejection.

Every rule of shared/contract.md is checked here, in the order a producer
would want to hear about it: size, encoding, JSON, the message key, then the
contract model. The rejection's `reason` is a short stable code (a metric
label and the `x-error-reason` DLQ header); `detail` says exactly what was
wrong, naming the field, without echoing personal data.

JSON is what orjson reads, with one allowance: an escaped lone UTF-16 surrogate
(`"\\ud83d"`, what JavaScript's JSON.stringify writes for a string cut inside an
emoji, and which JSON.parse and Ajv take) is read as U+FFFD, as JavaScript's
`toWellFormed()` and Go's encoding/json read it (`well_formed_escapes`; only a record
orjson refused for it pays for the repair). The repaired text is what is parsed and
checked for repeated keys; a rejection keeps the record's bytes as sent. Numbers
beyond a double's range (`1e400`) and nesting deeper than 1,023 levels, anywhere in a
record, stay `invalid_json`.

The contract is checked in two ways. A fast path (`ingest/fastdecode.py`,
msgspec) builds the event for the ordinary valid record; whatever it cannot
vouch for goes to the pydantic models, which alone name rejections. Both
start from the same orjson parse and end in the same event of the core
(`healthscore.core.events`: the fast path builds it directly, the pydantic
path converts its validated model), and tests keep the two equal on the
poison corpus, the simulator's stream and generated edge cases.

`event_json` is the event as the contract validated it, in the bytes the
pydantic serializer gives for the contract model; the payload digests stored
in `processed_events` are computed from it with nested keys sorted
(`canonical_event_json`), so that must never change for the same input
(tests/unit/test_wire_pins.py).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import orjson
from pydantic import BaseModel, ValidationError

from healthscore import contracts
from healthscore.core.events import Event, ProfileEvent, SupportEvent, UsageEvent
from healthscore.service.ingest.fastdecode import fast_support_event, fast_usage_event

# The three per-record types are msgspec structs, not dataclasses: built in C (a frozen
# dataclass sets each field through object.__setattr__: 1.2 us for a RawRecord, 0.07
# as a struct) and, holding no container that could refer back to them, left out of
# the garbage collector's tracking (gc=False), which otherwise walks every record a
# batch holds in each young collection.


class RawRecord(msgspec.Struct, frozen=True, gc=False):
    """The parts of a Kafka record the service uses."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    # metadata, kept as sent: a value may be binary or null
    headers: tuple[tuple[str, bytes | None], ...] = ()
    # set when Kafka's client could not read the record (what failed, where)
    corrupt: str | None = None
    # set on a stand-in for offsets the client passed with no record to hand over
    # (transaction markers), `offset` the first of them: the next offset after them
    skipped_to: int | None = None

    @property
    def last_offset(self) -> int:
        """The last offset this record (or stand-in) accounts for."""
        return self.offset if self.skipped_to is None else self.skipped_to - 1


class Decoded(msgspec.Struct, frozen=True, gc=False):
    record: RawRecord
    event: Event
    # the organization's id as the core keys it (`str(event.organization_id)`, its
    # canonical text): the decoder has it from the message key it checked against it,
    # cheaper than formatting the UUID again wherever a batch groups by organization
    organization: str
    # the event's time in POSIX seconds (what the alignment orders by): read once, as
    # a held-back record is aligned again with every batch until it is applied
    event_time: float
    # top-level fields the contract does not name (ignored, as it says), at most
    # UNKNOWN_NAMED of them, each cut: a misspelled field ("qty") is lost, so it is told
    unknown: tuple[str, ...] = ()

    @classmethod
    def of(cls, record: RawRecord, event: Event) -> Decoded:
        """`event` as decoded from `record`, with its organization and time derived."""
        return cls(record, event, str(event.organization_id), event.occurred_at.timestamp())


class Rejection(msgspec.Struct, frozen=True, gc=False):
    record: RawRecord
    reason: str
    detail: str
    # for the on-call engineer's log line only, never the dead letter's headers (which
    # the producing team reads): what the detail may not say, another organization's id
    logged: str = ""

    def __post_init__(self) -> None:
        # a detail may quote the input (pydantic puts a refused dict key in its
        # location): bounded, or the dead letter's headers alone could pass what its
        # topic takes (failing the batch on every retry), and the log line with them;
        # control characters escaped (a raw line break split a header read line by line)
        detail = _CONTROL.sub(_escaped, self.detail)
        if len(detail) > MAX_DETAIL_CHARS:
            detail = _shortened(detail, MAX_DETAIL_CHARS)
        if detail is not self.detail:
            msgspec.structs.force_setattr(self, "detail", detail)

    @property
    def event_time(self) -> None:
        """A rejection has no event time: the alignment never holds it back."""
        return None


MAX_DETAIL_CHARS = 1000
"""A rejection's `detail` (the `x-error-detail` header, the log line) is cut to this."""

# C0 controls, DEL and the characters str.splitlines() and log viewers break lines at
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _shortened(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}…({len(text)} characters)"


REASONS = (
    "too_large",
    "empty",
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "duplicate_key",
    "missing_key",
    "invalid_key",
    "key_mismatch",
    "missing_field",
    "invalid_uuid",
    "unknown_enum",
    "wrong_type",
    "out_of_range",
    "future_timestamp",
    "invalid_field",
    "invalid_text",
)
"""Reasons the decoder gives, from the record alone."""

PIPELINE_REASONS = (
    "corrupt_record",
    "undecodable",
    "event_id_conflict",
    "interaction_org_mismatch",
    "unprocessable",
)
"""Reasons given later: by the consumer (a record Kafka's client could not read)
or by the batch (a conflict with what was applied, a record the database or the
scoring core refused). `undecodable` is the decoder's safety net: an
unexpected error while decoding becomes a rejection, never an escaped
exception that would take the record's whole fetch with it."""

PASSED_OVER = "passed_over"
"""Not a rejection: the item of a stand-in (`RawRecord.skipped_to`), which the batch
stores the offset past and neither dead-letters nor counts."""

_PYDANTIC_REASON = {
    "missing": "missing_field",
    "uuid_parsing": "invalid_uuid",
    "uuid_type": "invalid_uuid",
    "uuid_version": "invalid_uuid",
    "uuid_nil": "invalid_uuid",
    "enum": "unknown_enum",
    "int_type": "wrong_type",
    "int_parsing": "wrong_type",
    "int_from_float": "wrong_type",
    "string_type": "wrong_type",
    "dict_type": "wrong_type",
    "bool_type": "wrong_type",
    "datetime_type": "wrong_type",
    "datetime_parsing": "invalid_field",
    "datetime_from_date_parsing": "invalid_field",
    "timezone_aware": "invalid_field",
    "greater_than_equal": "out_of_range",
    "less_than_equal": "out_of_range",
    "string_too_long": "out_of_range",
    "too_long": "out_of_range",
    "out_of_range": "out_of_range",
    "too_deep": "out_of_range",
    "nul_character": "invalid_text",
}


PROFILE_TOPIC = "organization.profile.v1"


class Decoder:
    """Decodes records of the input topics.

    Profiles (a few per organization, ever) always take the pydantic path.
    """

    def __init__(
        self,
        usage_topic: str,
        support_topic: str,
        max_message_bytes: int,
        *,
        profile_topic: str = PROFILE_TOPIC,
        fast: bool = True,
    ) -> None:
        self._models: dict[str, type[BaseModel]] = {
            usage_topic: contracts.UsageEvent,
            support_topic: contracts.SupportEvent,
            profile_topic: contracts.OrganizationProfile,
        }
        self._fast: dict[str, _FastPath] = (
            {usage_topic: fast_usage_event, support_topic: fast_support_event} if fast else {}
        )
        self._max_bytes = max_message_bytes
        # message key -> the UUID it spells, and its text (the canonical form: the key)
        self._keys: dict[bytes, tuple[UUID, str]] = {}
        # records the fast path left to pydantic, rejections among them
        self.fallbacks = 0
        # each topic's contract fields (others are ignored, and named in Decoded.unknown)
        self._fields = {topic: frozenset(m.model_fields) for topic, m in self._models.items()}

    def decode(self, record: RawRecord) -> Decoded | Rejection:
        """Total: every record becomes an event or a rejection with a reason."""
        try:
            return self._decode(record)
        except Exception as exc:
            return Rejection(
                record, "undecodable", f"decoding failed: {type(exc).__name__}: {str(exc)[:200]}"
            )

    def _decode(self, record: RawRecord) -> Decoded | Rejection:
        if record.skipped_to is not None:
            # no record: the batch stores the offset past it, and dead-letters nothing
            return Rejection(
                record,
                PASSED_OVER,
                f"offsets {record.offset}..{record.skipped_to - 1} hold no record to hand "
                "over (transaction markers)",
            )
        if record.corrupt is not None:
            return Rejection(record, "corrupt_record", record.corrupt)
        model = self._models.get(record.topic)
        if model is None:
            return Rejection(record, "invalid_field", f"unexpected topic {record.topic!r}")
        value = record.value
        if value is None or len(value) == 0:
            return Rejection(record, "empty", "message value is empty")
        if len(value) > self._max_bytes:
            return Rejection(
                record,
                "too_large",
                f"message is {len(value)} bytes; the limit is {self._max_bytes}",
            )
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejection(record, "invalid_utf8", f"not UTF-8 at byte {exc.start}")
        try:
            body: Any = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if "surrogate" not in str(exc):
                return Rejection(record, "invalid_json", f"not valid JSON: {exc}")
            # a lone surrogate escape (`JSON.stringify` of a string cut inside an emoji),
            # which JSON.parse and a schema validator take: U+FFFD, as JavaScript's
            # toWellFormed() and Go's encoding/json read it. The record (a dead letter's
            # value) keeps the bytes as sent
            value = well_formed_escapes(value)
            try:
                body = orjson.loads(value)
            except orjson.JSONDecodeError as again:
                return Rejection(record, "invalid_json", f"not valid JSON: {again}")
        if not isinstance(body, dict):
            return Rejection(
                record, "not_an_object", f"expected a JSON object, got {type(body).__name__}"
            )
        repeated = duplicate_key(value, body)
        if repeated is not None:
            return Rejection(
                record,
                "duplicate_key",
                f"the key {_shortened(repeated, 80)!r} appears twice in one JSON object "
                "(parsers differ on which value counts)",
            )
        if not record.key:
            return Rejection(record, "missing_key", "message key (organization_id) is missing")
        known = self._keys.get(record.key)
        if known is None:
            parsed = _canonical_uuid(record.key)
            if parsed is None:
                # Kafka partitions by the key's bytes: a non-canonical spelling of the
                # same UUID would land on another partition and break per-org order.
                return Rejection(
                    record, "invalid_key", "message key is not a UUID in canonical lowercase form"
                )
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            known = self._keys[record.key] = (parsed, record.key.decode("ascii"))
        key, organization = known
        received_at, received_as = _received_at(record)
        fast = self._fast.get(record.topic)
        event: Event | None = None
        if fast is not None:
            try:
                event = fast(body, received_at)
            except Exception:
                event = None  # never a verdict: pydantic decides
        if event is None:
            self.fallbacks += 1
            context = validation_context(received_at, received_as)
            try:
                validated = model.model_validate(body, context=context)
            except ValidationError as exc:
                rejection = _rejection_from(record, _as_sent_integers(model, body, context, exc))
                return _misrouted(model, body, rejection)
            assert isinstance(
                validated,
                contracts.UsageEvent | contracts.SupportEvent | contracts.OrganizationProfile,
            )
            event = core_event(validated)
        if key != event.organization_id:
            return Rejection(
                record,
                "key_mismatch",
                f"message key {key} differs from organization_id {event.organization_id}",
            )
        unknown = () if body.keys() <= self._fields[record.topic] else self._unknown(record, body)
        return Decoded(record, event, organization, event.occurred_at.timestamp(), unknown)

    def _unknown(self, record: RawRecord, body: dict[str, Any]) -> tuple[str, ...]:
        known = self._fields[record.topic]
        names = sorted(_shortened(name, _LOCATION_PART_CHARS) for name in body if name not in known)
        return tuple(names[:UNKNOWN_NAMED])


UNKNOWN_NAMED = 8
"""Unknown fields a decoded event names (a body may hold hundreds)."""

_FastPath = Callable[[dict[str, Any], datetime], Event | None]


# In JSON text, left to right: an escaped backslash (kept: `\\ud800` is text, no
# escape), a surrogate pair (kept), or a surrogate escape alone (replaced). Outside
# strings valid JSON has no backslash, and inside one every backslash starts an escape,
# so a match never begins inside another escape.
_SURROGATE_ESCAPE = re.compile(
    rb"\\\\"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)
_LONE_SURROGATE_LENGTH = len(b"\\ud800")


def _replacement_for_lone(match: re.Match[bytes]) -> bytes:
    text = match.group()
    return b"\\ufffd" if len(text) == _LONE_SURROGATE_LENGTH else text


def well_formed_escapes(value: bytes) -> bytes:
    """`value` (JSON text) with each escape of a lone UTF-16 surrogate (`\\ud800`,
    `\\udc00`, either half of a reversed pair) replaced by `\\ufffd`, U+FFFD, as
    JavaScript's `String.prototype.toWellFormed()` and Go's encoding/json read them.

    orjson refuses such an escape (a Python str could hold it, but neither UTF-8 nor
    PostgreSQL text can), while JSON.parse, and so Ajv, take it: a producer cutting
    text to a length with `.slice()` emits one whenever the cut falls inside an emoji,
    and its CI passes the record. Escaped backslashes and valid pairs are left as they
    are; the text keeps its length (an escape is six bytes either way), so a later
    parse error's position still holds.
    """
    return _SURROGATE_ESCAPE.sub(_replacement_for_lone, value)


# JSON's whitespace: removed, a key written `"k" : 1` counts as one `":` more
_WHITESPACE = b" \t\n\r"


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def duplicate_key(value: bytes, body: dict[str, Any]) -> str | None:
    """A key that one JSON object of `value` holds twice (`body` is `value` parsed), or
    None. orjson, like most parsers, keeps the last value; others keep the first, so a
    record such as `{"organization_id": A, ..., "organization_id": B}` would mean one
    organization to this service and another to the next reader of the topic.

    Every key in the text ends in `"` and a colon, with whitespace between or not, and
    the text holds `":` elsewhere only inside strings. So when the text has as many
    `":` as `body` has keys, and no more once its whitespace is removed (no key has
    whitespace before its colon), there is no repeat; otherwise (a spaced colon, a
    `":` in a string, a repeat) the text is parsed again, keeping every pair.
    """
    quoted_colons = value.count(b'":')
    if (
        quoted_colons == _keys_in(body)
        and value.translate(None, _WHITESPACE).count(b'":') == quoted_colons
    ):
        return None
    try:
        json.loads(value, object_pairs_hook=_refuse_repeats)
    except _RepeatedKey as repeated:
        return repeated.key
    except RecursionError:
        # nested deeper than Python's json goes (about 1,000 levels, orjson 1,024): an
        # unknown field may be, and a repeat beside it went unseen
        return _repeated_key(value)
    return None


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen = dict(pairs)
    if len(seen) < len(pairs):
        keys: set[str] = set()
        for key, _ in pairs:
            if key in keys:
                raise _RepeatedKey(key)
            keys.add(key)
    return seen


# In text orjson has parsed: a string (escapes and all), or a bracket outside strings
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]')
_COLON_NEXT = re.compile(rb"[ \t\n\r]*:")
_OPEN_OBJECT, _OPEN_ARRAY, _QUOTE = ord("{"), ord("["), ord('"')


def _repeated_key(value: bytes) -> str | None:
    """The first key written twice in one object of `value` (valid JSON), or None:
    read token by token with a stack of the open objects' keys, so at any depth (a
    few times slower than Python's json, hence only where that gives up)."""
    open_keys: list[set[str] | None] = []  # per open bracket: an object's keys, or None
    for token in _STRING_OR_BRACKET.finditer(value):
        text = token.group()
        first = text[0]
        if first == _QUOTE:
            if _COLON_NEXT.match(value, token.end()) is None:
                continue  # a string value, not a key
            keys = open_keys[-1]
            assert keys is not None  # a key followed by a colon is in an object
            key = json.loads(text) if b"\\" in text else text[1:-1].decode()
            if key in keys:
                return key
            keys.add(key)
        elif first == _OPEN_OBJECT:
            open_keys.append(set())
        elif first == _OPEN_ARRAY:
            open_keys.append(None)
        else:
            open_keys.pop()
    return None


def _keys_in(body: dict[str, Any]) -> int:
    """How many keys `body` holds, its nested objects' included (level by level, empty
    ones skipped: a 64 KiB value of thousands of `[]` took 5 ms a record pushed and
    popped one by one)."""
    count = 0
    level: list[Any] = [body]
    while level:
        count += sum(len(item) for item in level if type(item) is dict)
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if (type(child) is dict or type(child) is list) and child
        ]
    return count


def core_event(
    validated: contracts.UsageEvent | contracts.SupportEvent | contracts.OrganizationProfile,
) -> Event:
    """The core's event of a contract model validated by pydantic (the same values)."""
    if isinstance(validated, contracts.OrganizationProfile):
        return ProfileEvent(
            event_id=validated.event_id,
            organization_id=validated.organization_id,
            created_at=validated.created_at,
            # plain names: the digest's bytes are pydantic's, which writes the values
            milestones={name.value: at for name, at in validated.milestones.items()},
            occurred_at=validated.occurred_at,
        )
    if isinstance(validated, contracts.UsageEvent):
        return UsageEvent(
            event_id=validated.event_id,
            organization_id=validated.organization_id,
            user_id=validated.user_id,
            type=validated.type,
            occurred_at=validated.occurred_at,
            quantity=validated.quantity,
            feature=validated.feature,
            properties=validated.properties,
        )
    return SupportEvent(
        event_id=validated.event_id,
        organization_id=validated.organization_id,
        interaction_id=validated.interaction_id,
        action=validated.action,
        interaction_type=validated.interaction_type,
        channel=validated.channel,
        priority=validated.priority,
        sentiment=validated.sentiment,
        outcome=validated.outcome,
        assigned_to=validated.assigned_to,
        subject=validated.subject,
        follow_up_at=validated.follow_up_at,
        occurred_at=validated.occurred_at,
        cleared=tuple(validated.cleared or ()),
    )


_ADDED_FIELDS = ("cleared",)
"""Fields added to a contract after payload digests were first stored: left out of an
event's JSON when empty, so an event that does not use them digests as it did."""


def _contract_dict(event: Event) -> dict[str, Any]:
    """The event's fields, as `msgspec.structs.asdict` gives them, the added ones only
    when they hold something."""
    fields = msgspec.structs.asdict(event)
    for name in _ADDED_FIELDS:
        if name in fields:
            value = fields.pop(name)
            if value:
                fields[name] = list(value)
    return fields


def event_json(event: Event) -> bytes:
    """The event as validated, byte for byte as pydantic serializes the contract model.

    The same fields in the same order (checked below at import), each value as
    pydantic writes it: UUIDs and enums as their text, timestamps in ISO 8601
    with `Z` for a zero offset and six fractional digits when there are any,
    `properties` as parsed (orjson and pydantic write numbers and text alike;
    tests/unit/test_fast_decode.py compares the two on generated bodies).
    """
    return orjson.dumps(_contract_dict(event), option=orjson.OPT_UTC_Z)


def canonical_event_json(event: Event) -> bytes:
    """`event_json` as the same event however re-serialized: the keys of every nested
    object in sorted order, every time in UTC, `properties`' numbers by value.

    JSON objects are unordered, so a producer that re-serializes an event may
    reorder `properties` or a profile's `milestones`; a time is one instant
    whatever offset it is written at (`09:00+01:00` is `08:00Z`; the store keeps
    the instant alone); and a JSON number is its value (`1.0`, `1e0` and `1` are
    one number: a JavaScript relay writes `1`), an empty `properties` no
    properties (the service reads none of them). The payload digest is taken
    from this form, in which such a repeat is the same event. The top-level
    fields keep the contract's order, so an event whose nested keys are sorted
    already, whose times are in UTC and whose properties hold no integral
    fractions (most) digests as `event_json` does.
    """
    fields = _contract_dict(event)
    for name in _TIME_FIELDS:
        value = fields.get(name)
        if value is not None and value.utcoffset():
            fields[name] = value.astimezone(UTC)
    milestones = fields.get("milestones")
    if milestones:
        fields["milestones"] = {
            name: at.astimezone(UTC) if at.utcoffset() else at
            for name, at in sorted(milestones.items())
        }
    if "properties" in fields:
        fields["properties"] = _sorted_keys(fields["properties"], numbers_by_value=True) or None
    if "cleared" in fields:
        fields["cleared"] = sorted(fields["cleared"])  # a set of names, in any order
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


def as_sent_event_json(event: Event) -> bytes:
    """The canonical form of releases from 2026-12-04 until `canonical_event_json`'s:
    nested keys sorted, times at the offsets sent, numbers as parsed. A repeat of an
    id such a release claimed is compared with it too (`pipeline.as_sent_payload_digest`)."""
    fields = _contract_dict(event)
    for name in ("properties", "milestones"):
        value = fields.get(name)
        if value:
            fields[name] = _sorted_keys(value)
    return orjson.dumps(fields, option=orjson.OPT_UTC_Z)


_TIME_FIELDS = ("occurred_at", "follow_up_at", "created_at")
"""The events' fields that hold a time (a profile's milestones hold times too)."""

_EXACT_INTEGERS = 2.0**63
"""An integral float below this in magnitude is the integer orjson writes as such."""


def _sorted_keys(value: Any, numbers_by_value: bool = False) -> Any:
    """`value` with the keys of every object sorted, and with `numbers_by_value` every
    integral float an int."""
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key], numbers_by_value) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item, numbers_by_value) for item in value]
    if (
        numbers_by_value
        and type(value) is float
        and value.is_integer()
        and -_EXACT_INTEGERS < value < _EXACT_INTEGERS
    ):
        return int(value)  # -0.0 too: 0
    return value


def _check_fields(core: type[msgspec.Struct], model: type[BaseModel]) -> None:
    """Refuse to start if a contract model and the core's event differ in fields."""
    if core.__struct_fields__ != tuple(model.model_fields):
        raise RuntimeError(f"{core.__module__}.{core.__name__} does not mirror {model.__name__}")


_check_fields(UsageEvent, contracts.UsageEvent)
_check_fields(SupportEvent, contracts.SupportEvent)
_check_fields(ProfileEvent, contracts.OrganizationProfile)

_KEY_CACHE_SIZE = 65_536
"""Message keys (organization ids) remembered as parsed; the cache restarts when full."""

_CANONICAL_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _canonical_uuid(key: bytes) -> UUID | None:
    if _CANONICAL_UUID.fullmatch(key) is None:
        return None
    return UUID(key.decode("ascii"))


def key_organization(key: bytes | None) -> UUID | None:
    """The organization a message key names in any spelling UUID() reads (case, braces, a
    urn:uuid: prefix, no hyphens, surrounding white space), the contract's canonical form
    or not: whose a refused record is (the erasure and the subject-access export read
    keys so too); None: it names none."""
    if key is None:
        return None
    try:
        return UUID(key.decode("utf-8", "replace").strip())
    except ValueError:
        return None


_RECORD_TIMESTAMP = "the Kafka record's timestamp"
_CONSUMER_CLOCK = "the consumer's clock"


def _received_at(record: RawRecord) -> tuple[datetime, str]:
    """The clock `occurred_at` is judged against: the record's timestamp; and which
    clock it was, for a refusal to name (a producer whose record timestamps run behind
    its events' times has to know the record's timestamp was the reference).

    Using the record timestamp makes a replay judge each event exactly as the
    live run did; taking the earlier of it and the wall clock stops a producer
    whose clock runs ahead from vouching for its own future events.
    """
    stamp = record.timestamp_ms
    if stamp is None or stamp <= 0:
        return datetime.now(UTC), _CONSUMER_CLOCK
    if stamp < (time.time() - 1) * 1000:
        # well before the wall clock: the earlier of the two (cheaper)
        return datetime.fromtimestamp(stamp / 1000, UTC), _RECORD_TIMESTAMP
    # compared before converting: a stamp in micro- or nanoseconds lies past year
    # 9999, where a datetime cannot go, and is no reason to refuse a valid event
    now = datetime.now(UTC)
    if stamp >= now.timestamp() * 1000:
        return now, _CONSUMER_CLOCK
    return datetime.fromtimestamp(stamp / 1000, UTC), _RECORD_TIMESTAMP


def validation_context(received_at: datetime, received_as: str) -> dict[str, Any]:
    """The contracts' validation context (`check_not_in_future`): the clock and its name."""
    return {"received_at": received_at, "received_as": received_as}


def _as_sent_integers(
    model: type[BaseModel],
    body: dict[str, Any],
    context: dict[str, Any],
    exc: ValidationError,
) -> ValidationError:
    """`exc`, or, when `body` holds a top-level integer orjson read as a float (one
    beyond 64 bits: 10**20 is 1e+20 to it), the error of `body` with that float an
    integer again: a strict integer field refused the float as "not a valid integer"
    where the producer sent an integer out of the field's range."""
    floats = {
        name: int(value)
        for name, value in body.items()
        if type(value) is float and value.is_integer() and abs(value) >= _EXACT_INTEGERS
    }
    if not floats:
        return exc
    try:
        model.model_validate({**body, **floats}, context=context)
    except ValidationError as again:
        return again
    return exc


_LOCATION_PART_CHARS = 80
"""A part of a refused field's location (a dict key as sent) is cut to this."""


_ERRORS_NAMED = 5
"""A rejection's detail names this many of the record's errors (a producer fixing one
field at a time needed one re-drive round trip per error)."""


def _misrouted(model: type[BaseModel], body: dict[str, Any], rejection: Rejection) -> Rejection:
    """`rejection`, its detail saying so when the record looks like the other activity
    topic's event: a support event on the usage topic was told `type: Field required`,
    which sends its producer to add a field, not to the right topic."""
    if (
        model is contracts.UsageEvent
        and "type" not in body
        and {"action", "interaction_id"} <= body.keys()
    ):
        other = "a support.interactions.v1 event (action, interaction_id)"
    elif model is contracts.SupportEvent and "type" in body and "action" not in body:
        other = "a product.usage.v1 event (type, no action)"
    else:
        return rejection
    detail = f"{rejection.detail} (it looks like {other}: sent to the wrong topic?)"
    return Rejection(rejection.record, rejection.reason, detail, rejection.logged)


def _rejection_from(record: RawRecord, exc: ValidationError) -> Rejection:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    if kind == "value_error" and "minutes after" in first["msg"]:
        reason = "future_timestamp"
    else:
        reason = _PYDANTIC_REASON.get(kind, "invalid_field")
    named = "; ".join(_error_text(error) for error in errors[:_ERRORS_NAMED])
    more = f" (+{len(errors) - _ERRORS_NAMED} more)" if len(errors) > _ERRORS_NAMED else ""
    return Rejection(record, reason, f"{named}{more}")


def _error_text(error: Any) -> str:
    """`field: message`: the field as located (a dict key as the producer wrote it, cut
    when long), or, for a rule of the whole message about one field (a field an action
    requires), the field it names."""
    field = ".".join(_shortened(str(part), _LOCATION_PART_CHARS) for part in error["loc"])
    field = field or str(error.get("ctx", {}).get("field", "(message)"))
    return f"{field}: {error['msg']}"
