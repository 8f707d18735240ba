"""Organization states as the service stored them, decoded (`unpack_state`): the
column is MessagePack, which SQL cannot look into."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from healthscore.core.scoring.state import OrganizationState, unpack_state
from healthscore.store.states import state_of


async def stored_states(conn: Any) -> dict[str, OrganizationState]:
    """Every organization's stored state by id (rows without one yet left out)."""
    rows = await conn.fetch(
        "SELECT organization_id::text AS org, state_msgpack FROM organization_state"
    )
    return {
        r["org"]: unpack_state(r["state_msgpack"]) for r in rows if r["state_msgpack"] is not None
    }


async def organizations_without_state(conn: Any) -> set[str]:
    """Organizations whose row holds no state (created empty and never saved): left out
    of `stored_states`, so a check of every stored state asks for them apart."""
    rows = await conn.fetch(
        "SELECT organization_id::text AS org FROM organization_state WHERE state_msgpack IS NULL"
    )
    return {r["org"] for r in rows}


async def stored_state(conn: Any, organization: UUID | str) -> OrganizationState | None:
    return (await state_of(conn, str(organization)))[0]


async def event_counts(conn: Any) -> dict[str, int]:
    """Events applied per organization, as its stored state counts them."""
    return {org: state.event_count for org, state in (await stored_states(conn)).items()}


async def event_counts_in(database_url: str) -> dict[str, int]:
    """`event_counts` over a connection of its own."""
    conn = await asyncpg.connect(database_url)
    try:
        return await event_counts(conn)
    finally:
        await conn.close()


async def stored_state_in(database_url: str, organization: UUID | str) -> OrganizationState:
    """`stored_state` over a connection of its own; the organization must have one."""
    conn = await asyncpg.connect(database_url)
    try:
        state = await stored_state(conn, organization)
    finally:
        await conn.close()
    assert state is not None, f"no state stored for {organization}"
    return state
