"""`healthscore erase` against what a careless producer leaves behind: dead letters keyed
by the organization's id in a spelling other than the ones the erasure listed.

The consumer skips an erased organization's records whatever spelling of the id their key
uses (`pipeline._key_organization` parses it as a UUID); the erasure must remove the dead
letters of it not yet published under the same rule, or the dead-letter relay copies the
erased payload to `<topic>.dlq` after the erasure.
"""

from __future__ import annotations

import uuid

import asyncpg

from healthscore.service.ingest.decode import RawRecord, Rejection
from healthscore.service.ingest.dlq import dead_letter_columns
from healthscore.service.ingest.pipeline import _key_organization
from healthscore.store import sql
from tests.integration.test_erase_organization import _erase, _eraser_login
from tests.utils.harness import fetch, make_topics


def _spellings(org: uuid.UUID) -> list[bytes]:
    """Keys the consumer reads as `org` (refused as invalid_key) beyond the canonical one."""
    canonical = str(org)
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(canonical))
    return [
        form.encode()
        for form in (
            "{" + canonical.upper() + "}",
            org.hex.upper(),
            mixed,
            canonical + "\n",
            " " + canonical,
            "urn:uuid:" + canonical.upper(),
        )
    ]


async def test_dead_letters_keyed_by_another_spelling_of_the_id_are_erased(
    migrated_database: str, kafka_bootstrap: str
) -> None:
    topics = await make_topics(kafka_bootstrap, partitions=1)
    org = uuid.uuid4()
    other = uuid.uuid4()
    # a value that does not name the organization: a truncated body
    value = b'{"subject": "Jane Doe (jane@example.com) cannot log'
    keys = _spellings(org)
    rejections = [
        Rejection(RawRecord(topics.usage, 0, offset, key, value), "invalid_key", "not canonical")
        for offset, key in enumerate([*keys, *_spellings(other)])
    ]
    for rejection in rejections:
        # the consumer takes each of them for its organization (skipped once erased)
        assert _key_organization(rejection) in (str(org), str(other)), rejection.record.key
    # as a batch writes them, pending: the relay has not published them yet
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute(sql.INSERT_DEAD_LETTERS, *dead_letter_columns(rejections))
    finally:
        await conn.close()

    async with _eraser_login(migrated_database) as (eraser_url, _login):
        done = await _erase(
            eraser_url, kafka_bootstrap, topics, "--organization", str(org), "--yes"
        )
    assert done.returncode == 0, done.stderr

    rows = await fetch(
        migrated_database, "SELECT record_key FROM dead_letter_outbox ORDER BY source_offset"
    )
    left = [row["record_key"] for row in rows]
    assert [key for key in left if key in keys] == []
    # the other organization's dead letters stay
    assert left == _spellings(other)
