"""Units behind the hostile-input guarantees (the broker-level proofs are in
tests/integration/test_hostile_records.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from hypothesis import given, settings
from hypothesis import strategies as st

from healthscore.service.ingest.decode import (
    MAX_DETAIL_CHARS,
    PIPELINE_REASONS,
    Decoded,
    Decoder,
    RawRecord,
    Rejection,
    _repeated_key,
    duplicate_key,
)
from healthscore.service.ingest.dlq import (
    EARLIER_REJECTIONS_KEPT,
    ORIGINAL_PREFIX,
    OWN_HEADERS,
    VALUE_OMITTED,
    DeadLetterQueue,
    dlq_headers,
)
from healthscore.service.ingest.pipeline import BatchOutcome
from healthscore.service.ops.logging import framework_logger


def test_decoding_is_total() -> None:
    decoder = Decoder("usage", "support", 65536)
    # a value of the wrong type stands for any bug inside decoding
    broken: Any = "not bytes"
    result = decoder.decode(RawRecord("usage", 0, 7, b"k", broken))
    assert isinstance(result, Rejection)
    assert result.reason == "undecodable"
    assert "AttributeError" in result.detail
    assert result.reason in PIPELINE_REASONS


def test_a_rejection_detail_quoting_a_huge_input_is_bounded() -> None:
    """A refused dict key is part of pydantic's error location, so the detail once
    carried a milestone name of any length (and the dead letter's headers with it)."""
    decoder = Decoder("usage", "support", 1 << 20, profile_topic="profile")
    org = str(uuid.uuid4())
    body = {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "created_at": "2024-01-01T00:00:00Z",
        "milestones": {"m" * 200_000: "2024-02-01T00:00:00Z"},
        "occurred_at": "2025-01-01T00:00:00Z",
    }
    result = decoder.decode(RawRecord("profile", 0, 0, org.encode(), orjson.dumps(body)))
    assert isinstance(result, Rejection) and result.reason == "unknown_enum"
    assert result.detail.startswith("milestones." + "m" * 40 + "…(200000 characters).")
    assert len(result.detail) < 600  # the field, cut, and the names it may take
    # any other detail (an exception's message, say) is cut too, saying by how much
    long = Rejection(result.record, "undecodable", "x" * 50_000)
    assert len(long.detail) <= MAX_DETAIL_CHARS and long.detail.endswith("(50000 characters)")


def test_a_record_the_client_could_not_read_is_rejected_as_corrupt() -> None:
    decoder = Decoder("usage", "support", 65536)
    record = RawRecord("usage", 1, 9, None, None, corrupt="header key is not UTF-8")
    result = decoder.decode(record)
    assert isinstance(result, Rejection)
    assert (result.reason, result.detail) == ("corrupt_record", "header key is not UTF-8")


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("unit", [1_000, 1_000_000], ids=["microseconds", "nanoseconds"])
def test_a_record_timestamp_past_year_9999_is_only_a_clock(fast: bool, unit: int) -> None:
    """A producer setting the record timestamp in the wrong unit: the event is judged
    against the wall clock (the earlier of the two), not refused."""
    org = str(uuid.uuid4())
    at = datetime.now(UTC) - timedelta(minutes=1)
    body = {"event_id": str(uuid.uuid4()), "organization_id": org, "type": "login"}
    decoder = Decoder("usage", "support", 65536, fast=fast)
    stamp = int(time.time() * 1000) * unit
    for occurred_at, verdict in ((at, None), (at + timedelta(minutes=10), "future_timestamp")):
        value = orjson.dumps({**body, "occurred_at": occurred_at.isoformat()})
        result = decoder.decode(RawRecord("usage", 0, 1, org.encode(), value, stamp))
        if verdict is None:
            assert isinstance(result, Decoded), result
        else:
            assert isinstance(result, Rejection) and result.reason == verdict, result
            assert result.detail.endswith("(the consumer's clock)"), result.detail


def test_a_future_timestamp_refusal_names_the_clock_it_was_judged_against() -> None:
    """An event a minute old, in a record whose timestamp runs ten minutes behind it (a
    producer's skewed clock, a stream processor passing an input record's timestamp
    on), is refused: the record's timestamp is the reference, so that a replay judges
    as the live run did. The detail says so (it named a bare time the producer could
    not place)."""
    org = str(uuid.uuid4())
    now = datetime.now(UTC)
    body = {"event_id": str(uuid.uuid4()), "organization_id": org, "type": "login"}
    value = orjson.dumps({**body, "occurred_at": (now - timedelta(minutes=1)).isoformat()})
    stamp = int((now - timedelta(minutes=11)).timestamp() * 1000)
    for fast in (True, False):
        decoder = Decoder("usage", "support", 65536, fast=fast)
        result = decoder.decode(RawRecord("usage", 0, 1, org.encode(), value, stamp))
        assert isinstance(result, Rejection) and result.reason == "future_timestamp", result
        assert result.detail.endswith("(the Kafka record's timestamp)"), result.detail


def test_a_dead_letter_names_each_of_its_own_headers_once() -> None:
    """Whatever the producer sent, each of the dead letter's own header names occurs
    once, ours; the producer's headers follow, those named like ours renamed."""
    theirs: tuple[tuple[str, bytes | None], ...] = (
        *((name, b"stale") for name in sorted(OWN_HEADERS)),
        ("trace", None),
    )
    record = RawRecord("usage", 3, 41, b"k", b"{}", 1_700_000_000_000, theirs)
    headers = dlq_headers(Rejection(record, "invalid_field", "why"))
    names = [name for name, _value in headers]
    assert set(names[: len(OWN_HEADERS)]) == OWN_HEADERS  # the list covers every one
    assert all(names.count(name) == 1 for name in OWN_HEADERS)
    assert headers[len(OWN_HEADERS) :] == [
        *((ORIGINAL_PREFIX + name, b"stale") for name in sorted(OWN_HEADERS)),
        ("trace", None),
    ]


def test_a_dead_letter_rejected_again_keeps_each_rejections_headers_apart() -> None:
    """A dead letter re-driven and rejected twice: the first rejection's headers, already
    `x-original-`, move one prefix further, so no name occurs twice; a producer's own
    `x-original-` header that is not one of ours keeps its name."""
    first = dlq_headers(
        Rejection(RawRecord("usage", 0, 7, b"k", b"{}", 1, (("trace", b"t"),)), "a", "one")
    )
    second = dlq_headers(
        Rejection(RawRecord("usage", 1, 9, b"k", b"{}", 2, tuple(first)), "b", "two")
    )
    third = dlq_headers(
        Rejection(
            RawRecord("usage", 2, 11, b"k", b"{}", 3, (*second, ("x-original-mine", b"m"))),
            "c",
            "three",
        )
    )
    names = [name for name, _ in third]
    assert len(names) == len(set(names)), names
    by_name = dict(third)
    assert by_name["x-error-reason"] == b"c"
    assert by_name[ORIGINAL_PREFIX + "x-error-reason"] == b"b"
    assert by_name[2 * ORIGINAL_PREFIX + "x-error-reason"] == b"a"
    assert by_name[2 * ORIGINAL_PREFIX + "x-source-offset"] == b"7"
    assert by_name["trace"] == b"t" and by_name["x-original-mine"] == b"m"


def test_a_dead_letter_re_driven_in_a_loop_keeps_the_newest_rejections_only() -> None:
    """Each rejection adds seven headers: a record re-driven again and again grew
    without bound (until its topic refused it as too large). The newest
    EARLIER_REJECTIONS_KEPT earlier rejections are kept, and the producer's headers."""
    headers: tuple[tuple[str, bytes | None], ...] = (("trace", b"t"),)
    for round_ in range(10):
        record = RawRecord("usage", 0, round_, b"k", b"{}", 1, headers)
        headers = tuple(dlq_headers(Rejection(record, f"r{round_}", "again")))
    by_name = dict(headers)
    assert len(by_name) == len(headers)
    reasons = [by_name.get(depth * ORIGINAL_PREFIX + "x-error-reason") for depth in range(10)]
    assert reasons == [b"r9", b"r8", b"r7", b"r6", b"r5", None, None, None, None, None]
    assert len(headers) == (1 + EARLIER_REJECTIONS_KEPT) * len(OWN_HEADERS) + 1
    assert by_name["trace"] == b"t"


def test_framework_errors_are_counted_and_warnings_are_not() -> None:
    seen: list[str] = []
    logger = framework_logger(seen.append)
    logger.info("per-batch chatter stays out")
    logger.warning("a warning")
    try:
        raise RuntimeError("consume loop failed")
    except RuntimeError:
        logger.exception("Kafka error occurred")
    logger.log(logging.CRITICAL, "worse")
    assert seen == ["faststream", "faststream"]


def test_outcomes_of_a_bisected_batch_add_up() -> None:
    first = BatchOutcome(
        records=2,
        applied=2,
        rejected={"unprocessable": 1},
        consumed_by_topic={"usage": 2},
        first_offsets={("usage", 0): 10},
        next_offsets={("usage", 0): 12},
        timings_ms={"write": 1.5},
        record_timestamps_ms=[1, 2],
    )
    second = BatchOutcome(
        records=3,
        applied=1,
        duplicates=2,
        rejected={"unprocessable": 1, "invalid_json": 1},
        consumed_by_topic={"usage": 1, "support": 2},
        first_offsets={("usage", 0): 12, ("support", 1): 4},
        next_offsets={("usage", 0): 13, ("support", 1): 6},
        timings_ms={"write": 2.0},
        record_timestamps_ms=[3],
    )
    merged = first.merge(second)
    assert (merged.records, merged.applied, merged.duplicates) == (5, 3, 2)
    assert merged.rejected == {"unprocessable": 2, "invalid_json": 1}
    assert merged.consumed_by_topic == {"usage": 3, "support": 2}
    assert merged.first_offsets == {("usage", 0): 10, ("support", 1): 4}
    assert merged.next_offsets == {("usage", 0): 13, ("support", 1): 6}
    assert merged.timings_ms == {"write": 3.5}
    assert merged.record_timestamps_ms == [1, 2, 3]


@pytest.mark.parametrize("fast", [True, False])
def test_a_leap_second_is_a_valid_rfc_3339_timestamp(fast: bool) -> None:
    """`23:59:60` UTC (any offset) is the last microsecond of its minute; second 60
    of another minute is refused, with a reason, as before."""
    org = str(uuid.uuid4())
    decoder = Decoder("usage", "support", 65536, profile_topic="profile", fast=fast)
    last = datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

    def decode(topic: str, **body: Any) -> Decoded | Rejection:
        value = orjson.dumps({"event_id": str(uuid.uuid4()), "organization_id": org, **body})
        return decoder.decode(RawRecord(topic, 0, 1, org.encode(), value))

    for text in ("2016-12-31T23:59:60Z", "2016-12-31T15:59:60.5-08:00", "2016-12-31t23:59:60z"):
        usage = decode("usage", type="login", occurred_at=text)
        assert isinstance(usage, Decoded), usage
        assert usage.event.occurred_at == last
        support = decode(
            "support",
            interaction_id=str(uuid.uuid4()),
            action="follow_up_scheduled",
            follow_up_at=text,
            occurred_at="2017-01-01T00:00:00Z",
        )
        assert isinstance(support, Decoded), support
        assert support.event.follow_up_at == last  # type: ignore[union-attr]
        profile = decode(
            "profile",
            created_at=text,
            milestones={"clients_10": text},
            occurred_at="2017-01-01T00:00:00Z",
        )
        assert isinstance(profile, Decoded), profile
        assert profile.event.milestones == {"clients_10": last}  # type: ignore[union-attr]
    for text in ("2016-12-31T12:00:60Z", "2016-12-31T23:59:60+01:00", "2016-12-31T23:59:61Z"):
        refused = decode("usage", type="login", occurred_at=text)
        assert isinstance(refused, Rejection) and refused.reason == "invalid_field", refused


class _SizeLimitedProducer:
    """Acknowledges records up to `limit` bytes of value; refuses larger ones as the
    broker does (the future fails), the producer's own check aside."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes | None]]]] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> asyncio.Future[Any]:
        # as aiokafka's producer: a record with neither is refused before it is sent
        assert not (value is None and key is None), "Need at least one: key or value"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value is not None and len(value) > self.limit:
            future.set_exception(MessageSizeTooLargeError())
        else:
            self.sent.append((topic, key, value, list(headers or [])))
            future.set_result(None)
        return future


async def test_a_dead_letter_the_broker_refuses_as_too_large_goes_without_its_value() -> None:
    producer = _SizeLimitedProducer(limit=100)
    small = RawRecord("usage", 0, 1, b"k", b"{}", None, (("trace", b"1"),))
    large = RawRecord("usage", 0, 2, b"k" * 2000, b"x" * 500, None, (("trace", b"2"),))
    await DeadLetterQueue(producer, ".dlq").publish(
        [Rejection(small, "invalid_json", "a"), Rejection(large, "too_large", "b")]
    )
    (_, key, value, headers), (_, big_key, big_value, big_headers) = producer.sent
    assert (key, value, headers[-1]) == (b"k", b"{}", ("trace", b"1"))
    # the 2,000-byte key went too; an empty value, as a record needs a key or a value
    assert big_key is None and big_value == b""
    named = dict(big_headers)
    assert named["x-source-offset"] == b"2" and "trace" not in named
    assert named[VALUE_OMITTED] == (
        b"500 bytes, a 2000-byte key and 1 header: too large for the dead-letter topic; "
        b"the record stays at its source offset while the topic retains it"
    )
    # a producer's own header of that name cannot pose as ours
    posing = RawRecord("usage", 0, 3, b"k", b"{}", None, ((VALUE_OMITTED, b"no"),))
    assert (ORIGINAL_PREFIX + VALUE_OMITTED, b"no") in dlq_headers(
        Rejection(posing, "invalid_json", "c")
    )


# JSON values a producer may send: nested objects and lists, keys and strings holding
# quotes, colons, escapes and spaces (what the `":` count must not mistake for keys)
_JSON_TEXT = st.text(alphabet=st.sampled_from(list('ab": \\\t:{}[],\u00e9')), max_size=6)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_TEXT, inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_JSON_TEXT, _JSON_VALUES, max_size=5), st.booleans())
def test_no_repeat_is_found_where_there_is_none(body: dict[str, Any], indent: bool) -> None:
    text = orjson.dumps(body, option=orjson.OPT_INDENT_2 if indent else 0)
    assert duplicate_key(text, orjson.loads(text)) is None
    assert _repeated_key(text) is None  # the reading for nesting past Python's json


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_JSON_TEXT, _JSON_VALUES, min_size=1, max_size=5), st.data())
def test_a_repeated_key_is_found_at_any_depth(body: dict[str, Any], data: st.DataObject) -> None:
    """A key written twice into one object somewhere in the body, with any value."""
    objects = [body]
    pending: list[Any] = [body]
    while pending:
        item = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                pending.append(child)
            if isinstance(child, dict) and child:
                objects.append(child)
    target = data.draw(st.sampled_from(objects))
    key = data.draw(st.sampled_from(sorted(target)))
    marker = "\u2603repeat"  # a value no generated text holds: where to write the repeat
    target[key] = marker
    # the repeat's colon spaced or not (a spaced one hides from a count of `":`)
    colon = data.draw(st.sampled_from([b":", b" :", b"\n\t:"]))
    again = orjson.dumps(key) + colon + data.draw(st.sampled_from([b"null", b'"x"', b"[1]"]))
    text = orjson.dumps(body).replace(orjson.dumps(marker), orjson.dumps(marker) + b"," + again, 1)
    assert duplicate_key(text, orjson.loads(text)) == key
    assert _repeated_key(text) == key


def test_a_record_with_a_key_twice_is_rejected_naming_it() -> None:
    """The organization a record is about must be the one every reader sees: the body
    says another organization first and the key's last (what this parser keeps)."""
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    body = {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "user_id": str(uuid.uuid4()),
        "type": "login",
        "occurred_at": "2026-12-01T10:00:00Z",
    }
    value = b'{"organization_id":"' + other.encode() + b'",' + orjson.dumps(body)[1:]
    for fast in (True, False):
        decoder = Decoder("usage", "support", 65536, fast=fast)
        result = decoder.decode(RawRecord("usage", 0, 1, org.encode(), value))
        assert isinstance(result, Rejection)
        assert result.reason == "duplicate_key"
        assert "'organization_id' appears twice" in result.detail
        # the same body written once is valid
        once = decoder.decode(RawRecord("usage", 0, 2, org.encode(), orjson.dumps(body)))
        assert isinstance(once, Decoded)


@pytest.mark.parametrize("depth", [1, 500, 990, 1000, 1022])
def test_a_repeat_beside_nesting_as_deep_as_orjson_reads_is_found(depth: int) -> None:
    """Python's json (the check's second parse once) gave up at about 1,000 levels, where
    orjson reads to 1,024, and the repeat beside such nesting went unseen."""
    nested = b"[" * depth + b'{"a":1,"b":2}' + b"]" * depth
    once = b'{"organization_id":"x","trace":' + nested + b',"type":"login"}'
    twice = once[:-1] + b',"organization_id":"y"}'
    assert duplicate_key(once, orjson.loads(once)) is None
    assert duplicate_key(twice, orjson.loads(twice)) == "organization_id"
    inner = once.replace(b'"b":2', b'"b":2,"a" :3')  # the repeat down in the nesting
    assert duplicate_key(inner, orjson.loads(inner)) == "a"


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "quantity",
    [b"100000000000000000000", b"-100000000000000000000", b"1e20", b"18446744073709551616"],
)
def test_an_integer_beyond_64_bits_is_out_of_range_not_a_wrong_type(
    fast: bool, quantity: bytes
) -> None:
    """orjson reads an integer beyond 64 bits as a float, which the strict integer
    refused as "Input should be a valid integer": a producer sending 10**20 was told
    it had not sent an integer. Its value is out of the field's range, and says so."""
    org = str(uuid.uuid4())
    value = (
        b'{"event_id":"%s","organization_id":"%s","type":"login",'
        b'"occurred_at":"2026-12-01T10:00:00Z","quantity":%s}'
    ) % (str(uuid.uuid4()).encode(), org.encode(), quantity)
    result = Decoder("usage", "support", 65536, fast=fast).decode(
        RawRecord("usage", 0, 1, org.encode(), value)
    )
    assert isinstance(result, Rejection)
    bound = "greater than or equal to 1" if quantity.startswith(b"-") else "less than or equal"
    assert (result.reason, bound in result.detail) == ("out_of_range", True), result.detail
    assert result.detail.startswith("quantity: ")
    # a fraction stays the wrong type
    fraction = value.replace(quantity, b"2.5")
    refused = Decoder("usage", "support", 65536, fast=fast).decode(
        RawRecord("usage", 0, 2, org.encode(), fraction)
    )
    assert isinstance(refused, Rejection) and refused.reason == "wrong_type"


@pytest.mark.parametrize(
    ("action", "absent", "named"),
    [
        ("opened", {"channel": None}, "channel"),
        ("opened", {"interaction_type": None, "channel": None}, "interaction_type"),
        ("follow_up_scheduled", {}, "follow_up_at"),
    ],
)
def test_a_field_its_action_requires_is_a_missing_field_naming_it(
    action: str, absent: dict[str, None], named: str
) -> None:
    """The contract says `channel` is required on `opened`: its absence was
    `invalid_field` with the detail `(message): Value error, ...`, where an absent field
    every event requires is `missing_field` naming it. Now both read alike."""
    org = str(uuid.uuid4())
    body = {
        "event_id": str(uuid.uuid4()),
        "organization_id": org,
        "interaction_id": str(uuid.uuid4()),
        "action": action,
        "occurred_at": "2026-01-01T00:00:00Z",
        "interaction_type": "check_in",
        "channel": "email",
        **absent,
    }
    decoded = Decoder("usage", "support", 65536).decode(
        RawRecord("support", 0, 0, org.encode(), orjson.dumps(body))
    )
    assert isinstance(decoded, Rejection)
    assert decoded.reason == "missing_field"
    assert decoded.detail.startswith(f"{named}: Field required when action is `{action}`")
    assert "Value error" not in decoded.detail
