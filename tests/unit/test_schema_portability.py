"""The published schemas' patterns read alike in every producer's validator.

JSON Schema names ECMA-262 for `pattern`, but a Go producer's validator compiles it
with RE2 (Go's regexp), which has no lookahead and no `\\u` escape, and Python's `re`
differs again: its `$` also matches before a final newline. The schemas held `$(?!\\n)`,
a year check by lookahead and `^[^\\u0000]*$`, which no Go validator compiled (review
36c, F2). They are now written without either, their verdicts unchanged: checked here
against the lookahead patterns they replace, as Python reads those. (ECMA-262 and RE2
were checked on the same strings outside the suite: Node's RegExp with the `u` flag and
Google's RE2 judge every string as Python does, a final newline aside, which a time's
`not` and an id's fixed length refuse.)
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from healthscore.contracts._common import (
    DATE_TIME_PATTERN,
    NO_NUL_PATTERN,
    UUID_LENGTH,
    UUID_PATTERN,
)
from healthscore.contracts.export import default_schema_dir

# The patterns as published until review 36c (each in the syntax of ECMA-262 and Python
# alike, and of no RE2)
_OLD_DAY = (
    "(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
_OLD_TIME = "(?:[01][0-9]|2[0-3]):(?:[0-5][0-9]:[0-5][0-9]|[0-5]9:60)(?:\\.[0-9]+)?"
_OLD_OFFSET = "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
OLD_DATE_TIME = re.compile(f"^(?!0|1[0-8]|19[0-8]){_OLD_DAY}[Tt]{_OLD_TIME}{_OLD_OFFSET}$(?!\\n)")
OLD_UUID = re.compile(
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$(?!\\n)"
)
OLD_NO_NUL = re.compile("^[^\\u0000]*$")

INPUT_SCHEMAS = (
    "product.usage.v1.json",
    "support.interactions.v1.json",
    "organization.profile.v1.json",
)


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _subschemas(value)


def _published(name: str) -> dict[str, Any]:
    return dict(json.loads((default_schema_dir() / name).read_text()))


@pytest.mark.parametrize("name", [*INPUT_SCHEMAS, "asyncapi.json"])
def test_no_pattern_needs_what_re2_lacks(name: str) -> None:
    patterns = {
        node["pattern"]
        for node in _subschemas(_published(name))
        if isinstance(node.get("pattern"), str)
    }
    assert patterns
    for pattern in patterns:
        re.compile(pattern)
        # lookaround, backreferences, `\u`/`\U` escapes, possessive and atomic groups
        assert not re.search(r"\(\?[=!<>]|\(\?P[=<]|\\[uUkgz0-9]|[*+?}]\+", pattern), pattern


@pytest.mark.parametrize("name", INPUT_SCHEMAS)
def test_each_pattern_has_its_companion_against_a_final_newline(name: str) -> None:
    """Python's `$` matches before a final newline, RE2's and ECMA-262's do not: an id
    is fixed at 36 characters, a time refuses a newline."""
    for node in _subschemas(_published(name)):
        if node.get("pattern") == UUID_PATTERN:
            assert node["minLength"] == node["maxLength"] == UUID_LENGTH, node
        elif node.get("pattern") == DATE_TIME_PATTERN:
            assert node["not"] == {"pattern": "\\n"}, node


def _new_uuid(text: str) -> bool:
    return len(text) == UUID_LENGTH and re.search(UUID_PATTERN, text) is not None


def _new_date_time(text: str) -> bool:
    return "\n" not in text and re.search(DATE_TIME_PATTERN, text) is not None


def _dates() -> Iterator[str]:
    years: tuple[str, ...] = (
        "0001",
        "1899",
        "1989",
        "1990",
        "1991",
        "1992",
        "1996",
        "1999",
        "2000",
    )
    years += ("2023", "2024", "2096", "2100", "2400", "9999", "199", "20240")
    months = ("00", "01", "02", "04", "06", "09", "11", "12", "13", "1")
    days = ("00", "01", "28", "29", "30", "31", "32", "1")
    for year, month, day in itertools.product(years, months, days):
        for separator in ("T", "t", " "):
            yield f"{year}-{month}-{day}{separator}12:00:00Z"


def _times() -> Iterator[str]:
    hours = ("00", "05", "12", "23", "24", "5")
    minutes = ("00", "09", "14", "29", "44", "59", "60")
    seconds = ("00", "59", "60", "61")
    fractions = ("", ".5", ".123456789", ".")
    offsets: tuple[str, ...] = (
        "Z",
        "z",
        "+00:00",
        "-00:00",
        "+00:30",
        "+05:45",
        "-00:15",
        "+12:45",
        "-09:30",
    )
    offsets += ("+23:59", "-23:59", "+24:00", "+01:60", "+0100", "+01", "")
    for parts in itertools.product(hours, minutes, seconds, fractions, offsets):
        hour, minute, second, fraction, offset = parts
        yield f"2016-12-31T{hour}:{minute}:{second}{fraction}{offset}"


def _coupled(text: str) -> bool:
    """A leap second's local minute ends in the digit 23:59 UTC has at its offset."""
    minute = int(text[15])
    zone = re.search(r"([Zz]|[+-]\d\d:\d\d)$", text)
    assert zone is not None
    if zone[1] in "Zz":
        return minute == 9
    offset = int(zone[1][-1])
    return minute == ((9 + offset) % 10 if zone[1][0] == "+" else (9 - offset) % 10)


def test_times_are_judged_as_before_but_leap_seconds_at_any_offset() -> None:
    """The same verdict on every date and time spelling as the lookahead pattern's, with
    and without a final newline; a leap second (second 60) is taken in the local minute
    whose last digit 23:59:60 UTC has at the offset (`05:44:60+05:45`, review 36c F5),
    not only in a minute ending in 9 (which took `23:59:60+05:45`, 18:14 UTC)."""
    checked = leap = 0
    for text in itertools.chain(_dates(), _times()):
        for written in (text, text + "\n", text + "\n\n", "\n" + text):
            checked += 1
            new = _new_date_time(written)
            if written[17:19] == "60" and OLD_DATE_TIME.search(f"{text[:17]}59{text[19:]}"):
                leap += 1
                assert new == (written == text and _coupled(text)), written
            else:
                assert new == bool(OLD_DATE_TIME.search(written)), repr(written)
    assert checked > 20_000 and leap > 100


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("2016-12-31T23:59:60Z", True),
        ("2016-12-31T23:59:60.5z", True),
        ("2017-01-01T05:44:60+05:45", True),
        ("2017-01-01T12:44:60+12:45", True),
        ("2016-12-31T23:44:60-00:15", True),
        ("2017-01-01T00:29:60+00:30", True),
        ("2016-12-31T23:59:60+05:45", False),
        ("2016-12-31T23:30:60Z", False),
        ("1990-01-01T00:00:00Z", True),
        ("1989-12-31T23:59:59Z", False),
        ("1992-02-29T00:00:00Z", True),
        ("1990-02-29T00:00:00Z", False),
        ("2000-02-29T00:00:00Z", True),
        ("2100-02-29T00:00:00Z", False),
        ("2016-12-31T23:59:59Z\n", False),
    ],
)
def test_date_time_examples(text: str, valid: bool) -> None:
    assert _new_date_time(text) == valid


def test_ids_are_judged_as_before() -> None:
    canonical = "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a11"
    texts = [
        canonical,
        canonical.upper(),
        canonical[:-1],
        canonical + "0",
        canonical.replace("-", ""),
        "{" + canonical + "}",
        "urn:uuid:" + canonical,
        " " + canonical,
        canonical[:8] + "_" + canonical[9:],
        canonical[:-1] + "g",
        "00000000-0000-0000-0000-000000000000",
        "\uff10" + canonical[1:],
    ]
    for text in texts:
        for written in (text, text + "\n", text + "\n\n", "\n" + text):
            assert _new_uuid(written) == bool(OLD_UUID.search(written)), repr(written)


def test_text_without_nul_is_judged_as_before() -> None:
    assert NO_NUL_PATTERN == "^[^\\x00]*$"  # `\x00`: ECMA-262, RE2 and Python alike
    for text in ("", "a", "a\x00b", "\x00", "\n", "a\n", "\x00\n", "\x01", "\U0001f600"):
        assert bool(re.search(NO_NUL_PATTERN, text)) == bool(OLD_NO_NUL.search(text)), text
