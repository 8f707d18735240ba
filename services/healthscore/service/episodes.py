"""Risk episodes a rebuilt database leaves open for the alerts' consumers.

A replay into an empty database under another model (docs/operations.md, "Replaying
...", step 4) decides the alerts again: an organization the old database had in an open
episode may be out of risk in the new one, or in an episode of another id. Its old
episode was published and the notification service holds it open; the new database
sends nothing that closes it (the switch marks the replayed alerts sent). This compares
the two databases' open episodes and lists those left open, for the operator to hand to
the notification team (the in-place promotion, which keeps the stored episodes, has no
such leftovers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True, slots=True)
class OpenEpisode:
    organization_id: UUID
    episode_id: UUID | None  # None: alerts of a release before episode ids
    kind: str
    risk_level: str
    scored_at: datetime


@dataclass(frozen=True, slots=True)
class LeftOpen:
    """An episode the consumers hold open that the new database does not continue."""

    old: OpenEpisode
    # the new database's open episode of the organization (another id), or None: it is
    # not at risk there
    new: OpenEpisode | None


def left_open(old: Iterable[OpenEpisode], new: Iterable[OpenEpisode]) -> list[LeftOpen]:
    """The episodes open in `old` (as published) that `new` does not hold open under the
    same id, by organization."""
    current = {episode.organization_id: episode for episode in new}
    found = []
    for episode in sorted(old, key=lambda e: str(e.organization_id)):
        now = current.get(episode.organization_id)
        if now is None or episode.episode_id is None or now.episode_id != episode.episode_id:
            found.append(LeftOpen(episode, now))
    return found


def format_left_open(rows: list[LeftOpen]) -> list[str]:
    """Tab-separated: organization, the episode held open (its raise's alert id), its
    level, when it was last scored, and what the new database says."""
    lines = []
    for row in rows:
        old = row.old
        now = (
            "not at risk"
            if row.new is None
            else f"in episode {row.new.episode_id} ({row.new.risk_level})"
        )
        lines.append(
            f"{old.organization_id}\t{old.episode_id or '-'}\t{old.risk_level}\t"
            f"{old.scored_at.isoformat()}\t{now}"
        )
    return lines
