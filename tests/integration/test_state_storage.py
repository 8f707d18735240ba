"""How a state document is stored: inline and uncompressed up to a page (migration 0064).

A batch rewrites most of its organizations' states; above PostgreSQL's default
toast target (about 2 KB) every save would compress the document and every read
decompress it.
"""

from __future__ import annotations

import uuid

import asyncpg

from healthscore.core.scoring.state import OrganizationState, encode_state
from healthscore.store import sql


async def test_a_state_of_several_kilobytes_is_stored_as_it_is(migrated_database: str) -> None:
    organization = uuid.uuid4()
    state = OrganizationState(
        organization_id=str(organization),
        users={str(uuid.UUID(int=i)): 1.7e9 + i for i in range(60)},
        daily_scores={str(20_000 + day): 71.25 for day in range(31)},
    )
    document = encode_state(state).decode()
    assert 4_000 < len(document) < 8_000
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("INSERT INTO organizations (id) VALUES ($1)", organization)
        await conn.fetch(sql.INSERT_STATES, [organization], [document], [None], [None])
        row = await conn.fetchrow(
            "SELECT pg_column_size(state), octet_length(state::text) FROM organization_state "
            "WHERE organization_id = $1",
            organization,
        )
        assert row is not None
        stored, length = row
    finally:
        await conn.close()
    assert length == len(document)
    # compressed, it would take a fraction of that (the users' ids and times repeat)
    assert stored >= length
