"""Field types and rules shared by the input contracts."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NoReturn
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

MAX_FUTURE_SKEW = timedelta(minutes=5)
# An organization's earliest time wins (its first event fixes its tenure, a profile's
# creation date and milestones cannot move later), so a zero-value time, Go's
# 0001-01-01T00:00:00Z or an unset Unix time 1970-01-01, would be permanent: times
# written with a year before this one are refused as out of range, by the topics (the
# schemas' pattern says it too: the year as written, offsets aside) and by
# `healthscore import`
EARLIEST_PLAUSIBLE_YEAR = 1990
# deeper `properties` objects are refused before anything recurses into them
MAX_PROPERTIES_DEPTH = 32
# `format` is an annotation in JSON Schema 2020-12 unless a validator is told to
# assert it (most are not), so ids and times say their form in a `pattern` as well.
# The patterns are written in the syntax ECMA-262 (Ajv), RE2 (Go's regexp, which has no
# lookaround and no `\u` escape) and Python's re read alike: no lookahead, `\x00` for
# U+0000. Python's `$` also matches before a final newline (the others' only at the
# end), so an id's length is fixed beside its pattern and a time refuses a newline in a
# `not` of its own (tests/unit/test_schema_portability.py).
NO_NUL_PATTERN = "^[^\\x00]*$"
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
UUID_LENGTH = 36
# the year as written, from EARLIEST_PLAUSIBLE_YEAR (1990), spelled out
_YEAR = "(?:199[0-9]|[2-9][0-9]{3})"
# February 29th of the leap years from 1990: divisible by 4, centuries by 400
_LEAP_YEAR = "(?:199[26]|[2-9][0-9](?:0[48]|[2468][048]|[13579][26])|(?:[2468][048]|[3579][26])00)"
_DAY = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|{_LEAP_YEAR}-02-29)"
)
_HOURS = "(?:[01][0-9]|2[0-3])"
_FRACTION = "(?:\\.[0-9]+)?"
_OFFSET = f"(?:[Zz]|[+-]{_HOURS}:[0-5][0-9])"


def _leap_second_pattern() -> str:
    """Second 60 (a leap second) with its offset: in a local minute whose last digit is
    that of 23:59 UTC at the offset (59 at `Z`, `:00` or `:30`; 44 at +05:45 or +12:45,
    as 23:59:60 UTC is written 05:44:60+05:45), the offset's minute coupled to the
    time's without a lookahead. The service takes it at 23:59 UTC only (its hour, and
    a minute's tens, are a rule beyond the schema)."""
    alternatives = []
    for digit in range(10):
        ahead = (digit + 1) % 10  # local minute = 59 + the offset's minutes
        behind = (9 - digit) % 10  # local minute = 59 - the offset's minutes
        zulu = "[Zz]|" if digit == 9 else ""
        offsets = f"{zulu}\\+{_HOURS}:[0-5]{ahead}|-{_HOURS}:[0-5]{behind}"
        alternatives.append(f"[0-5]{digit}:60{_FRACTION}(?:{offsets})")
    return f"(?:{'|'.join(alternatives)})"


_TIME = f"{_HOURS}:(?:[0-5][0-9]:[0-5][0-9]{_FRACTION}{_OFFSET}|{_leap_second_pattern()})"
DATE_TIME_PATTERN = f"^{_DAY}[Tt]{_TIME}$"
"""RFC 3339's date-time (section 5.6), from year 1990 (EARLIEST_PLAUSIBLE_YEAR)."""


def date_time_schema() -> dict[str, Any]:
    """A time's form in JSON Schema, beside its `format`: the pattern, and no newline
    (Python's `$` matches before a final one)."""
    return {"pattern": DATE_TIME_PATTERN, "not": {"pattern": "\\n"}}


def uuid_schema() -> dict[str, Any]:
    """An id's form in JSON Schema, beside its `format`: the pattern and the length (37
    characters with a final newline, which Python's `$` matches before)."""
    return {"pattern": UUID_PATTERN, "minLength": UUID_LENGTH, "maxLength": UUID_LENGTH}


def check_not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    """Reject timestamps more than five minutes ahead of the reference clock.

    The reference is the Kafka record's timestamp when the decoder passes one in
    the validation context (so a replay judges an event exactly as the live run
    did), else the wall clock.
    """
    context = info.context or {}
    reference: datetime | None = context.get("received_at")
    if reference is None:
        reference = datetime.now(UTC)
    if value - reference > MAX_FUTURE_SKEW:
        what = context.get("received_as")
        raise ValueError(
            f"occurred_at {value.isoformat()} is more than 5 minutes after "
            f"{reference.isoformat()}" + (f" ({what})" if what else "")
        )
    return value


def require_text_timestamp(value: object) -> object:
    """Only RFC 3339 strings: lax parsing would read 0 or "1700000000" as a date."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string with an offset")
    if _DATE_AND_TIME.match(value) is None:
        # a date, `T` (or a space, read as always), hours and minutes (the seconds may be
        # left out, as Java's OffsetDateTime.toString() leaves out zero seconds): the
        # parser alone also took `2024-01-01_00:00:00Z`
        raise ValueError("must be an RFC 3339 timestamp string with an offset")
    if value[16:19] == ":60":
        return _leap_second(value)
    return value


_DATE_AND_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}[^0-9]")
_LEAP_SECOND = re.compile(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d):60(?:[.,]\d+)?([Zz]|[+-]\d\d:\d\d)")
_AWARE: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def _leap_second(value: str) -> object:
    """RFC 3339's leap second, `23:59:60` UTC, as the last microsecond before it.

    A datetime has no second 60; the time stays within the second's minute and
    day, after every earlier instant. Second 60 at another UTC minute is no
    leap second and is refused; what does not match the form is left to the
    parser (which refuses it as before).
    """
    match = _LEAP_SECOND.fullmatch(value)
    if match is None:
        return value
    try:
        parsed = _AWARE.validate_python(f"{match[1]}:59.999999{match[2]}")
    except ValidationError:
        return value
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        return parsed  # outside years 1-9999: `check_representable` says so
    if (utc.hour, utc.minute) != (23, 59):
        raise ValueError("second 60 (a leap second) only exists at 23:59:60 UTC")
    return parsed


def utc_representable(value: datetime) -> bool:
    """Whether `value`'s UTC value lies within years 1-9999: `0001-01-01T00:00:00+14:00`
    parses, but its UTC value is in year 0, which no later conversion can take."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def check_representable(value: datetime) -> datetime:
    """The UTC value must lie within years 1-9999, as the contract says
    (`utc_representable`): every later conversion would fail, on every retry of its
    batch."""
    if not utc_representable(value):
        raise PydanticCustomError(
            "out_of_range",
            "its UTC value {value} falls outside 0001-01-01..9999-12-31",
            {"value": value.isoformat()},
        )
    return value


def check_plausible(value: datetime) -> datetime:
    """Written with a year from EARLIEST_PLAUSIBLE_YEAR on."""
    if value.year < EARLIEST_PLAUSIBLE_YEAR:
        raise PydanticCustomError(
            "out_of_range",
            "year {year} is before {earliest}: a zero-value or unset time (0001-01-01, "
            "1970-01-01)?",
            {"year": value.year, "earliest": EARLIEST_PLAUSIBLE_YEAR},
        )
    return value


def check_text(value: str) -> str:
    """PostgreSQL text cannot hold U+0000: refuse it here, not in the database."""
    if "\x00" in value:
        _nul("", value)
    return value


def checked_json_size(value: Any, max_bytes: int) -> int:
    """The size of `value` serialized (UTF-8 bytes, as on the wire), after
    `check_json_value`'s rules, cheapest first: a value over `max_bytes` is measured
    and not walked (a 64 KiB object of thousands of members cost 26 ms a record to walk,
    and any record may be that); one within it is walked item by item only when a
    cheaper look finds a container past the depth limit or something like U+0000 in
    the serialized text (orjson writes it `\\u0000`; a string holding that text
    itself is walked for nothing and passes)."""
    try:
        serialized = orjson.dumps(value)
    except orjson.JSONEncodeError:
        check_json_value(value)  # nested past orjson's limit, far past this one: raises
        raise
    if len(serialized) > max_bytes:
        return len(serialized)
    if b"\\u0000" in serialized or not _within_depth(value):
        check_json_value(value)
    return len(serialized)


def _within_depth(value: Any) -> bool:
    """No object or array nested deeper than MAX_PROPERTIES_DEPTH (the top one is at 1)."""
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 1
    while level:
        if depth > MAX_PROPERTIES_DEPTH:
            return False
        level = [
            child
            for item in level
            for child in (item.values() if type(item) is dict else item)
            if type(child) is dict or type(child) is list
        ]
        depth += 1
    return True


def check_json_value(value: Any) -> None:
    """Depth and NUL checks of a free-form JSON value, without recursion; an error
    says where in the value (`b.c[1]`), which a producer needs in a 16 KiB object.

    A few hundred levels of nesting would make any recursive consumer (the
    serializer measuring its size among them) raise outside validation. Each item
    carries its place as a link to its parent's (built into a path only for an error).
    """
    stack: list[tuple[Any, int, _Place]] = [(value, 1, None)]
    while stack:
        item, depth, place = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_PROPERTIES_DEPTH:
                _too_deep(_path(place))
            for key, child in item.items():
                if isinstance(key, str) and "\x00" in key:
                    _nul(f"{_path((key, place))} (its name)", key)
                stack.append((child, depth + 1, (key, place)))
        elif isinstance(item, list):
            if depth > MAX_PROPERTIES_DEPTH:
                _too_deep(_path(place))
            stack.extend((child, depth + 1, (i, place)) for i, child in enumerate(item))
        elif isinstance(item, str) and "\x00" in item:
            _nul(_path(place) or "the value", item)


_Place = tuple[Any, Any] | None
"""Where an item is: (its key or index, its parent's place), None at the top."""

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}")


def _path(place: _Place) -> str:
    """`b.c[1]`: members as `.name` (or `["name"]`, cut when long), items as `[i]`."""
    parts: list[str] = []
    while place is not None:
        key, place = place
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif _PLAIN_NAME.fullmatch(name := str(key)):
            parts.append(f".{name}")
        else:
            shown = name if len(name) <= 40 else f"{name[:37]}..."
            parts.append(f"[{json.dumps(shown, ensure_ascii=True)}]")
    return "".join(reversed(parts)).removeprefix(".")


def _nul(path: str, text: str) -> NoReturn:
    """Refuse `text` for its U+0000, saying where in a JSON value it is (`path`; none for
    a field's own text)."""
    raise PydanticCustomError(
        "nul_character",
        "contains U+0000 at character {index}{where}, which text columns cannot store",
        {"index": text.index("\x00"), "where": f" of {path}" if path else ""},
    )


def _too_deep(path: str) -> NoReturn:
    raise PydanticCustomError(
        "too_deep",
        "nested deeper than {limit} levels (at {where})",
        {"limit": MAX_PROPERTIES_DEPTH, "where": path or "the value"},
    )


# The length limit comes before the NUL check: one counted after a validator is
# pydantic's generic "at most N items after validation", which is what a dead
# letter's x-error-detail then told the producing team instead of characters.
FeatureText = Annotated[
    str,
    StringConstraints(max_length=100),
    AfterValidator(check_text),
    Field(json_schema_extra={"pattern": NO_NUL_PATTERN}),
]
SubjectText = Annotated[
    str,
    StringConstraints(max_length=500),
    AfterValidator(check_text),
    Field(json_schema_extra={"pattern": NO_NUL_PATTERN}),
]
_TIMESTAMP_RULE = (
    "RFC 3339 with an offset, written with a year from 1990; its UTC value within "
    "0001-01-01..9999-12-31"
)
OccurredAt = Annotated[
    AwareDatetime,
    BeforeValidator(require_text_timestamp),
    AfterValidator(check_representable),
    AfterValidator(check_plausible),
    Field(
        description=(
            f"When it happened ({_TIMESTAMP_RULE}); not more than 5 minutes ahead of the "
            "Kafka record's timestamp (the time it was sent: a producer passing an older "
            "record's timestamp on has its events refused as future_timestamp), or of the "
            "consumer's clock where that is earlier or the record has none."
        ),
        json_schema_extra=date_time_schema(),
    ),
]
TextTimestamp = Annotated[
    AwareDatetime,
    BeforeValidator(require_text_timestamp),
    AfterValidator(check_representable),
    AfterValidator(check_plausible),
    Field(json_schema_extra=date_time_schema()),
]
NIL_UUID = "00000000-0000-0000-0000-000000000000"


def check_not_nil(value: UUID) -> UUID:
    """The nil UUID is what an unset id serializes to, not an id: taken, it would make
    one event, organization, interaction or user of everything sent without one."""
    if value.int == 0:
        raise PydanticCustomError(
            "uuid_nil",
            "the nil UUID (all zeros) is not an id: an unset id? Send the real one, or "
            "null where the field may be empty",
        )
    return value


WireUUID = Annotated[
    UUID,
    AfterValidator(check_not_nil),
    Field(json_schema_extra={**uuid_schema(), "not": {"const": NIL_UUID}}),
]
"""An id of an input event: any UUID but the nil one."""
