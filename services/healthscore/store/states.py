"""Organization state rows: read, locked, and saved checked against their version.

Every writer of `organization_state` saves through `save_states_checked`: a
row is written only while its `health_version` is still the one the state
was computed from, so a consumer holding states between batches
(`healthscore.service.ingest.owned`) never overwrites what another writer
(the sweep, the profile import, a replica during a rebalance) saved meanwhile.
Identifiers are the core's canonical UUID strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from healthscore.core.effects import BatchEffects, next_silence_rescore
from healthscore.core.scoring.state import OrganizationState, pack_state, unpack_state
from healthscore.store import Connection, sql
from healthscore.store.records import to_datetime

# organization -> stored state (absent for an empty row) and organization -> version
States = tuple[dict[str, OrganizationState], dict[str, int]]


def stored_states(rows: Iterable[Any]) -> States:
    """Rows of (organization_id, state, health_version): the decoded states and versions.

    A row created empty (NULL: by `lock_states`; JSON null before migration 0066)
    has a version and no state.
    """
    states: dict[str, OrganizationState] = {}
    versions: dict[str, int] = {}
    for row in rows:
        org = str(row["organization_id"])
        versions[org] = row["health_version"]
        if row["state"] is not None:
            states[org] = unpack_state(row["state"])
    return states, versions


async def state_of(conn: Connection, organization: str) -> tuple[OrganizationState | None, Any]:
    """One organization's stored state (None: none yet) and its row (None: no row)."""
    row = await conn.fetchrow(sql.STATE_OF, organization)
    if row is None or row["state"] is None:
        return None, row
    return unpack_state(row["state"]), row


async def lock_states(conn: Connection, organizations: Sequence[str]) -> States:
    """Lock the state rows of `organizations` in organization order, creating missing ones."""
    states, versions = stored_states(await conn.fetch(sql.LOCK_STATES, organizations))
    missing = [org for org in organizations if org not in versions]
    if missing:
        await conn.execute(sql.ENSURE_ORGANIZATIONS, missing)
        await conn.execute(sql.ENSURE_STATE_ROWS, missing)
        # ours, or created by another transaction meanwhile
        more, more_versions = stored_states(await conn.fetch(sql.LOCK_STATES, missing))
        states.update(more)
        versions.update(more_versions)
    return states, versions


async def erased_among(conn: Connection, organizations: Sequence[str | UUID]) -> set[str]:
    """Those of `organizations` that were erased (`healthscore erase`): never written again."""
    rows = await conn.fetch(sql.ERASED_AMONG, list(organizations))
    return {str(row["organization_id"]) for row in rows}


def rescored_states(effects: BatchEffects) -> list[OrganizationState]:
    """The states a batch (or sweep) changed: those of the organizations it applied
    events to or rescored (not every event is rescored: `BatchEffects.changed`)."""
    return [effects.states[org] for org in effects.changed()]


def _state_columns(
    states: list[OrganizationState], rescore_step_seconds: float
) -> tuple[list[bytes], list[datetime | None], list[datetime | None]]:
    return (
        [pack_state(s) for s in states],
        [to_datetime(s.last_event_at) for s in states],
        [to_datetime(next_silence_rescore(s, rescore_step_seconds)) for s in states],
    )


async def save_states_checked(
    conn: Connection,
    to_save: Sequence[OrganizationState],
    versions: Mapping[str, int],
    rescore_step_seconds: float,
    events_applied: bool = False,
) -> tuple[dict[str, tuple[bytes, int]], set[str]]:
    """Save states computed from `versions` (absent: no stored row yet) and queue them;
    `events_applied`: a batch applied events to them (the sweep waits for organizations
    whose events are still arriving, migration 0120).

    Returns each saved organization's state as saved (`pack_state`) with its new
    version, and the organizations another writer changed (or created)
    meanwhile, which were not saved.
    """
    saved: dict[str, tuple[bytes, int]] = {}
    for statement, states in (
        (sql.SAVE_STATES_CHECKED, [s for s in to_save if s.organization_id in versions]),
        (sql.INSERT_STATES, [s for s in to_save if s.organization_id not in versions]),
    ):
        if not states:
            continue
        ids = [s.organization_id for s in states]
        encoded, last_events, due = _state_columns(states, rescore_step_seconds)
        if statement is sql.INSERT_STATES:
            await conn.execute(sql.ENSURE_ORGANIZATIONS, ids)
            rows = await conn.fetch(statement, ids, encoded, last_events, due, events_applied)
        else:
            rows = await conn.fetch(
                statement,
                ids,
                encoded,
                last_events,
                due,
                [versions[o] for o in ids],
                events_applied,
            )
        by_org = dict(zip(ids, encoded, strict=True))
        for row in rows:
            org = str(row["organization_id"])
            saved[org] = (by_org[org], row["version"])
    return saved, {s.organization_id for s in to_save if s.organization_id not in saved}


async def save_locked_states(
    conn: Connection,
    to_save: Sequence[OrganizationState],
    versions: Mapping[str, int],
    rescore_step_seconds: float,
    events_applied: bool = False,
) -> dict[str, tuple[bytes, int]]:
    """`save_states_checked` for rows this transaction locked: none can have moved on."""
    saved, changed = await save_states_checked(
        conn, to_save, versions, rescore_step_seconds, events_applied
    )
    if changed:
        raise RuntimeError(f"state rows changed under lock: {sorted(changed)[:5]}")
    return saved
