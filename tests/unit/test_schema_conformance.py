"""The published JSON Schemas and the decoder never disagree.

Product teams validate their events against `schema/contracts/<topic>.json` in their
own CI. The promise to them: an event valid under its topic's schema is applied (by
the fast path and the pydantic path alike, into the same event), and an event the
schema refuses is dead-lettered with a reason naming the field the schema names.
Valid instances are a full one per topic (and per support action with rules of its
own) with their times drawn in every RFC 3339 spelling; near misses are those with one
field changed (a catalog of wrong types, bounds, long and odd text, odd UUIDs and
times) or removed, or one unknown field added. The
rules JSON Schema cannot say are named in `tests/utils/schema_instances.py`
(`beyond_the_schema`), and a schema-valid instance they refuse must get exactly that
reason.

Quick and derandomized in CI; `SCHEMA_CONFORMANCE_EXAMPLES=5000` (a random seed each
run, printed on failure) or `-m slow` for a longer search.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthscore.contracts.export import CONTRACT_MODELS, default_schema_dir
from healthscore.service.ingest.decode import Decoded, Rejection
from tests.utils.schema_instances import (
    BASES,
    JUDGES,
    RECEIVED_AT,
    TOPICS,
    TS,
    beyond_the_schema,
    decide,
    named_fields,
    read_beyond_the_schema,
    rfc3339_texts,
    schema_of,
)

_LONG = os.environ.get("SCHEMA_CONFORMANCE_EXAMPLES")
QUICK = settings(
    max_examples=int(_LONG) if _LONG else 60,
    derandomize=not _LONG,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(QUICK, max_examples=3000, derandomize=False)

_NESTED: dict[str, Any] = {}
_cursor = _NESTED
for _ in range(40):
    _cursor["a"] = {}
    _cursor = _cursor["a"]

# What one field is changed to: every field gets every value, and the schema decides
ODD_VALUES: list[Any] = [
    # wrong types, nulls, numbers at and past the bounds, integral numbers as floats
    None, True, 0, -1, 1, 1.5, 2.0, 1e3, 1e6, 1000000, 1000001, 1e300, "5", "", [], {}, ["x"],
    # text: lengths (in code points), Unicode edges, U+0000
    "x" * 100, "x" * 101, "x" * 500, "x" * 501, "\U0001f600" * 100, "\U0001f600" * 101,
    "e\u0301" * 50, "\ufeffinvoices", "\u202einvoices", "\ufffe\uffff\U0010ffff", "a\x00b",
    # UUIDs: canonical either case, and the other spellings
    "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a12",
    "0B7F4A4E-3D0C-4A53-9C6E-2F1D5F0C9A12",
    "{0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a12}",
    "urn:uuid:0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a12",
    "0b7f4a4e3d0c4a539c6e2f1d5f0c9a12",
    "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a1",
    "0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a1g",
    " 0b7f4a4e-3d0c-4a53-9c6e-2f1d5f0c9a12",
    "00000000-0000-0000-0000-000000000000",
    "0b7f4a4e-3d0c-0a53-9c6e-2f1d5f0c9a12",
    # times: RFC 3339's spellings, and what is not one
    "2025-03-01T09:30:00Z", "2025-03-01t09:30:00z", "2025-03-01T09:30:00-00:00",
    "2025-03-01T09:30:00.123456789+05:30", "2016-12-31T23:59:60Z", "2025-03-01T09:30:60Z",
    "2025-03-01 09:30:00Z", "2025-03-01T09:30:00+0100", "2025-03-01T09:30:00,5Z",
    "2025-03-01T09:30Z", "2025-03-01T09:30+01:00", "2025-03-01_09:30:00Z",
    "2025-03-01T09:30:00", "2025-03-01T09:30:00.Z", "2025-02-29T09:30:00Z",
    "2025-03-01T24:00:00Z", "2025-03-01T09:30:00+24:00", "20250301T093000Z", "2025-3-01T09:30:00Z",
    "\uff12\uff10\uff12\uff15-03-01T09:30:00Z", "2025-03-01T09:30:00.\u0661Z",
    "0001-01-01T00:00:00+01:00", "0000-12-31T23:30:00-01:00", "9999-12-31T23:59:59-00:01",
    "1999-12-31T23:59:59Z", "2999-01-01T00:00:00Z", 1735725600,
    # enumerations
    "login", "Login", "login ", "opened", "email", "complaint", "first_referral", "unknown",
    # objects
    {"a": "\x00"}, {"\x00": 1}, {"a": {"b": [1, {"c": "d"}]}}, _NESTED, {"big": "x" * 17000},
    {"first_referral": "2024-01-01T00:00:00Z"}, {"first_referral": None}, {"nope": TS},
    {"first_referral": "2024-01-01 00:00:00Z"},
]  # fmt: skip


def check_agreement(topic: str, body: dict[str, Any]) -> None:
    """Schema-valid => applied (or refused for a rule beyond the schema, with its reason);
    schema-invalid => refused, naming a field the schema names."""
    valid = JUDGES[topic].agree(body)
    outcome = decide(topic, body)
    if valid:
        expected = beyond_the_schema(topic, body)
        if expected is None:
            assert isinstance(outcome, Decoded), (body, outcome)
        else:
            assert isinstance(outcome, Rejection), (body, expected)
            assert outcome.reason == expected, (body, outcome)
        return
    if isinstance(outcome, Decoded):
        # only a spelling the service reads beyond the schema (schema_instances.py)
        assert any(read_beyond_the_schema(v) for v in body.values()), (
            f"the schema refuses {body!r}, the service applies it"
        )
        return
    named = named_fields(JUDGES[topic].errors(body))
    if outcome.reason == "key_mismatch":  # another organization than the key's
        assert "organization_id" in named, (body, outcome.detail, named)
        return
    field = outcome.detail.split(":", 1)[0].split(".", 1)[0]
    if field == "(message)":  # a rule across fields names them in its text
        assert any(name in outcome.detail for name in named), (body, outcome.detail, named)
        return
    assert field in named, (body, outcome.detail, named)


def near_misses() -> Iterator[tuple[str, dict[str, Any], str]]:
    """Every base with one field removed, one unknown field added, or one field changed
    to each odd value."""
    for topic, base in BASES:
        for name in base:
            yield topic, {k: v for k, v in base.items() if k != name}, f"without {name}"
            for value in ODD_VALUES:
                yield topic, {**base, name: value}, f"{name}={value!r:.40}"
        yield topic, {**base, "unknown_field": {"x": 1}}, "an unknown field"


def test_the_bases_are_valid_and_applied() -> None:
    for topic, base in BASES:
        assert JUDGES[topic].agree(base), base
        assert isinstance(decide(topic, base), Decoded), base


def test_every_near_miss_is_judged_as_the_schema_judges_it() -> None:
    failures = []
    for topic, body, change in near_misses():
        try:
            check_agreement(topic, body)
        except AssertionError as error:
            failures.append(f"{topic} {change}: {str(error)[:300]}")
    assert not failures, f"{len(failures)} disagreements:\n" + "\n".join(failures)


def _mutated(topic: str) -> st.SearchStrategy[dict[str, Any]]:
    """A base of `topic` with one field removed or changed to an odd value, or with its
    times (every one at once) in another RFC 3339 spelling."""

    def change(body: dict[str, Any], name: str, value: Any, drop: bool) -> dict[str, Any]:
        if drop:
            return {k: v for k, v in body.items() if k != name}
        return {**body, name: value}

    bases = [body for t, body in BASES if t == topic]
    fields = sorted(schema_of(topic)["properties"])
    odd = st.builds(
        change,
        st.sampled_from(bases),
        st.sampled_from([*fields, "unknown_field"]),
        st.sampled_from(ODD_VALUES),
        st.booleans(),
    )
    return odd | st.builds(_retimed, st.sampled_from(bases), st.data())


def _retimed(body: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """`body` with each of its times drawn anew: `occurred_at` before the record's time,
    the others anywhere in years 1-9999 (a profile's may then lie after its occurred_at,
    a rule beyond the schema)."""
    out = dict(body)
    for name in ("occurred_at", "follow_up_at", "created_at"):
        if out.get(name) is not None:
            latest = RECEIVED_AT if name == "occurred_at" else datetime(9999, 12, 31, tzinfo=UTC)
            out[name] = data.draw(rfc3339_texts(latest), label=name)
    if out.get("milestones"):
        out["milestones"] = {
            name: data.draw(rfc3339_texts(RECEIVED_AT), label=name) for name in out["milestones"]
        }
    return out


@pytest.mark.parametrize("topic", TOPICS)
@QUICK
@given(data=st.data())
def test_a_generated_near_miss_is_judged_as_the_schema_judges_it(
    topic: str, data: st.DataObject
) -> None:
    check_agreement(topic, data.draw(_mutated(topic), label="near miss"))


@pytest.mark.slow
@pytest.mark.parametrize("topic", TOPICS)
@SLOW
@given(data=st.data())
def test_long_search(topic: str, data: st.DataObject) -> None:
    check_agreement(topic, data.draw(_mutated(topic), label="near miss"))


def test_the_asyncapi_document_embeds_the_published_schemas() -> None:
    """One source of truth: each model the AsyncAPI document embeds is, refs aside, the
    published schema file of its topic, and so are the enumerations they refer to."""
    document = json.loads((default_schema_dir() / "asyncapi.json").read_text())
    embedded = document["components"]["schemas"]
    for name, model in CONTRACT_MODELS.items():
        published = json.loads((default_schema_dir() / name).read_text())
        defs = published.pop("$defs", {})
        published.pop("$id")
        published.pop("$schema")  # the dialect: the AsyncAPI document says its own
        text = json.dumps(embedded[model.__name__], sort_keys=True)
        assert text.replace("#/components/schemas/", "#/$defs/") == json.dumps(
            published, sort_keys=True
        ), name
        for ref, schema in defs.items():
            assert embedded[ref] == schema, (name, ref)
