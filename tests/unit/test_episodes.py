"""Which published episodes a rebuilt database leaves open (`service.episodes`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from healthscore.service.episodes import OpenEpisode, format_left_open, left_open

AT = datetime(2026, 11, 1, tzinfo=UTC)


def _open(org: uuid.UUID, episode: uuid.UUID | None, level: str = "high") -> OpenEpisode:
    return OpenEpisode(org, episode, "risk_raised", level, AT)


def test_an_episode_is_left_open_unless_the_new_database_holds_it_under_its_id() -> None:
    kept, gone, moved, legacy = (uuid.uuid4() for _ in range(4))
    first, second, third = (uuid.uuid4() for _ in range(3))
    old = [_open(kept, first), _open(gone, second), _open(moved, third), _open(legacy, None)]
    new = [_open(kept, first), _open(moved, uuid.uuid4(), "critical"), _open(legacy, None)]
    found = {row.old.organization_id: row.new for row in left_open(old, new)}
    assert set(found) == {gone, moved, legacy}
    assert found[gone] is None
    now = found[moved]
    assert now is not None
    assert now.risk_level == "critical"
    # an alert without an episode id (a release before them) cannot be matched: listed
    assert found[legacy] is not None


def test_nothing_is_left_open_when_the_databases_agree_or_the_old_held_nothing() -> None:
    org, episode = uuid.uuid4(), uuid.uuid4()
    assert left_open([_open(org, episode)], [_open(org, episode, "critical")]) == []
    assert left_open([], [_open(org, episode)]) == []


def test_the_listing_names_what_the_new_database_says() -> None:
    org, episode, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    [gone] = format_left_open(left_open([_open(org, episode)], []))
    assert gone.split("\t") == [str(org), str(episode), "high", AT.isoformat(), "not at risk"]
    [moved] = format_left_open(left_open([_open(org, episode)], [_open(org, other, "medium")]))
    assert moved.split("\t")[-1] == f"in episode {other} (medium)"
