"""The pure parts of `healthscore erase`: the ids it is given, the keys it looks for."""

from __future__ import annotations

import uuid

import pytest

from healthscore.service.erasure import (
    Erasure,
    ErasureRefused,
    format_erasure,
    key_spellings,
    parse_organization_ids,
)
from healthscore.service.ingest.decode import Decoded, Decoder, RawRecord, Rejection
from healthscore.service.ingest.pipeline import _key_organization

ORG = uuid.UUID("3a1890c7-8092-44d4-ab28-fef02b9c014e")


def test_ids_are_canonical_once_each_in_order_comments_skipped() -> None:
    other = uuid.uuid4()
    lines = [f"  {str(ORG).upper()} ", "", "# the ticket's ids", str(other), "{" + str(ORG) + "}"]
    assert parse_organization_ids(lines) == [ORG, other]


def test_a_bad_id_erases_nothing_and_is_named() -> None:
    with pytest.raises(ErasureRefused, match=r"'acme'.*nothing erased"):
        parse_organization_ids([str(ORG), "acme"], "ids.txt")


@pytest.mark.parametrize("key", key_spellings(ORG))
def test_every_key_spelling_erased_is_one_a_record_of_the_organization_may_carry(
    key: bytes,
) -> None:
    """The canonical key is applied; the other spellings are dead-lettered as
    `invalid_key` (so the erasure looks for them in the dead letters), and the event
    path reads each as the organization (so a later one of an erased organization is
    skipped, not dead-lettered)."""
    value = (
        b'{"event_id":"033ed48f-9956-405e-a918-48b41540aed0","organization_id":"'
        + str(ORG).encode()
        + b'","user_id":"d037cdff-7c24-4d49-a9d4-95dd81355c53","type":"login",'
        b'"occurred_at":"2026-11-09T23:00:00+00:00","quantity":1}'
    )
    decoded = Decoder("usage", "support", 65536).decode(
        RawRecord("usage", 0, 0, key, value, 1_800_000_000_000)
    )
    if key == str(ORG).encode():
        assert isinstance(decoded, Decoded) and decoded.organization == str(ORG)
    else:
        assert isinstance(decoded, Rejection) and decoded.reason == "invalid_key", decoded
        assert _key_organization(decoded) == str(ORG)


def test_the_output_says_what_was_removed_per_table_and_a_repeat() -> None:
    first = Erasure(ORG, {"organizations": 1, "support_interactions": 3}, first=True)
    assert format_erasure(first, applied=False) == [
        f"organization {ORG}: would remove 4 row(s)",
        "  organizations               1",
        "  support_interactions        3",
    ]
    repeat = Erasure(ORG, {}, first=False)
    assert "erased before" in format_erasure(repeat, applied=True)[0]


def test_a_file_of_many_ids_is_read_in_linear_comparisons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request file of thousands of ids (an offboarding of a reseller's customers)
    compares each id with a few others, not with every id before it."""
    ids = [uuid.UUID(int=n) for n in range(1, 3001)]
    lines = [str(org) for org in ids] + [str(ids[0]).upper()]
    compared = 0
    equal = uuid.UUID.__eq__

    def counted(self: uuid.UUID, other: object) -> bool:
        nonlocal compared
        compared += 1
        return equal(self, other)

    monkeypatch.setattr(uuid.UUID, "__eq__", counted)
    assert parse_organization_ids(lines, "ids.txt") == ids
    assert compared <= 2 * len(lines)
