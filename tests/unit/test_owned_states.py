"""OwnedStates: what a batch takes is gone until given back; bounded by recency."""

from __future__ import annotations

from healthscore.core.scoring.aggregate import new_state
from healthscore.core.scoring.state import pack_state
from healthscore.service.ingest.owned import OwnedStates


def _saved(*orgs: str, version: int = 1) -> dict[str, tuple[bytes, int]]:
    return {org: (pack_state(new_state(org)), version) for org in orgs}


def test_take_removes_and_decodes_what_was_given_back() -> None:
    owned = OwnedStates(10)
    owned.give_back(_saved("a", "b", version=3))
    states, versions, missing = owned.take(["a", "c"])
    assert versions == {"a": 3} and missing == ["c"]
    assert states["a"].organization_id == "a"
    # taken: a failed batch never gives it back, so the next batch reads it
    assert owned.take(["a"])[2] == ["a"]
    assert len(owned) == 1


def test_the_least_recently_given_back_go_first() -> None:
    owned = OwnedStates(2)
    owned.give_back(_saved("a", "b"))
    owned.give_back(_saved("a"))  # a again: now the most recent
    owned.give_back(_saved("c"))
    assert sorted(owned.take(["a", "b", "c"])[1]) == ["a", "c"]


def test_capacity_zero_holds_nothing_and_clear_forgets() -> None:
    none = OwnedStates(0)
    none.give_back(_saved("a"))
    assert len(none) == 0
    owned = OwnedStates(5)
    owned.give_back(_saved("a", "b"))
    owned.clear()
    assert owned.take(["a", "b"])[2] == ["a", "b"]
