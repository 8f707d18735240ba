"""`healthscore erase`: remove an organization's data for good (offboarding, GDPR art. 17).

Each organization is erased in its own transaction, as healthscore_eraser
(migration 0095), while the service may be running:

1. It takes every stored consumer offset row: a batch takes its partitions' rows
   first, so the erasure waits for the batches in flight, and every batch after it
   reads the tombstone in the statement that claims its event ids. Then it deletes
   the `organizations` row (the state, score history, interactions, milestones,
   read model row, alert outbox and outcomes, labels, shadow rows, queue entries
   cascade) and its dead letters not yet published, and records the tombstone,
   `erased_organizations`. A consumer that held the state finds its row gone when it
   saves (`save_states_checked`) and the tombstone in its next claim; an erasure
   committed between a batch's claim and its saves is found then (`sql.ERASED_AMONG`).
2. A second transaction deletes its processed event ids (no foreign key, a large
   table without an index on the organization: one scan for a page of organizations
   whose first steps committed) and marks the erasure finished (`completed_at`). A
   command killed between the two leaves it unfinished: `erase --list` says so, and
   the same command run again finishes it.

Then the compacted health feed gets a tombstone record (the key, no value), so its
consumers drop the organization too. The first transaction owes it
(`health_feed_tombstones_owed`, migration 0097): when the command cannot publish it,
the running service's projector does. What this cannot reach (alerts and dead letters
already published, records in the input topics until their retention) is said in
docs/operations.md, "Erasing an organization".

Without `apply`, both transactions run and roll back: the counts printed are what
the erasure would remove (`pg_stat_xact_user_tables`, cascades included; the eraser
reads none of the rows themselves, which row-level security hides from it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar
from uuid import UUID

import asyncpg
import orjson
import structlog

from healthscore.errors import HealthscoreError
from healthscore.store import erasure
from healthscore.store.schema_catalog import ERASER_ROLE

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

__all__ = [
    "ERASER_ROLE",
    "ERASE_PAGE",
    "erase_organization",
    "erase_organizations",
    "format_erasure",
    "parse_organization_ids",
]

# an erasure that meets a deadlock (a batch's checked save, an import page) or its lock
# timeout is run again, as an import page is
ERASE_ATTEMPTS = 5

# organizations whose event ids one statement deletes: `processed_events` has no index
# on the organization, so each statement scans it
ERASE_PAGE = 500


class ErasureRefused(HealthscoreError):
    """The ids given cannot be erased as given; the message says why."""


class _DryRun(Exception):
    """Rolls a dry run's transaction back."""


@dataclass
class Erasure:
    organization_id: UUID
    rows: dict[str, int] = field(default_factory=dict)
    # when the first erasure of it committed (None: a dry run of a first erasure)
    erased_at: datetime | None = None
    first: bool = False
    # erased before by a run that never finished its second step: this run finishes it
    resumed: bool = False
    # the feed tombstone's entry this run owed (None: a dry run): its publish clears it
    tombstone_owed_since: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def parse_organization_ids(values: Sequence[str], source: str = "--organization") -> list[UUID]:
    """The ids in canonical form, each once, in the order given; `ErasureRefused` naming
    every one that is not a UUID (nothing is erased then)."""
    # a dict keeps the order given; a list's `in` made a file of many ids quadratic
    ids: dict[UUID, None] = {}
    bad: list[str] = []
    for value in values:
        text = value.strip()
        if not text or text.startswith("#"):
            continue
        try:
            org = UUID(text)
        except ValueError:
            bad.append(repr(value))
            continue
        ids[org] = None
    if bad:
        raise ErasureRefused(f"{source}: not a UUID: {', '.join(bad[:20])}; nothing erased")
    return list(ids)


def key_spellings(organization: UUID) -> list[bytes]:
    """Keys a dead letter of `organization` may carry: the contract's canonical form (a
    record refused for its value) and other spellings of the id, refused as
    `invalid_key`. Examples only: the erasure matches every spelling the consumer reads
    as the id (`store.erasure.DELETE_DEAD_LETTERS`)."""
    canonical = str(organization)
    return [
        form.encode()
        for form in (
            canonical,
            canonical.upper(),
            "{" + canonical + "}",
            "urn:uuid:" + canonical,
            organization.hex,
            organization.hex.upper(),
            "{" + canonical.upper() + "}",
            " " + canonical + "\n",
        )
    ]


async def _deleted(conn: asyncpg.Connection) -> dict[str, int]:
    return {row["table_name"]: row["deleted"] for row in await conn.fetch(erasure.ROWS_DELETED)}


def _since(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The rows deleted between two readings of one transaction: a session's counters
    still hold what its earlier transactions (a dry run, a retried attempt) deleted until
    they are reported, between transactions."""
    deleted = {table: count - before.get(table, 0) for table, count in after.items()}
    return {table: count for table, count in deleted.items() if count > 0}


async def _first_step(conn: asyncpg.Connection, organization: UUID, apply: bool) -> Erasure:
    """Everything but the event ids, for one organization (rolled back unless `apply`)."""
    result = Erasure(organization)
    try:
        async with conn.transaction():
            before = await _deleted(conn)
            if apply:
                # an alert or dead letter of it on its way out goes before the erasure;
                # none after (a dry run deletes nothing, and holds no relay up)
                await conn.execute(erasure.RELAYS_LOCK_TIMEOUT)
                await conn.execute(erasure.WAIT_FOR_THE_RELAYS)
            await conn.execute(erasure.ERASE_LOCK_TIMEOUT)
            await conn.execute(erasure.LOCK_CONSUMERS)
            # waits for a transaction creating the organization (not committed yet)
            claimed = await conn.fetchval(erasure.CLAIM_ORGANIZATION, organization)
            feed_debt_due = await conn.fetchval(erasure.FEED_DEBT_NOT_DUE, organization)
            # recorded before the delete, which the eraser may make of a recorded
            # erasure only (migration 0121); its counts added once known
            result.erased_at = await conn.fetchval(erasure.RECORD_TOMBSTONE, organization, "{}")
            result.first = result.erased_at is not None
            await conn.execute(erasure.DELETE_ORGANIZATION, organization)
            result.rows = _since(before, await _deleted(conn))
            if claimed is not None:
                # the row the claim inserted: not the organization's
                result.rows["organizations"] -= 1
                if not result.rows["organizations"]:
                    del result.rows["organizations"]
            if result.rows and result.first:
                await conn.execute(
                    erasure.ADD_ROWS_REMOVED, organization, orjson.dumps(result.rows).decode()
                )
            # here, not in the second step: the dead-letter relay would publish them
            # (the erased payload) were the command killed between the two; after the
            # tombstone, which the function requires (migration 0104)
            counted = await _deleted(conn)
            await conn.execute(erasure.DELETE_DEAD_LETTERS, organization)
            dead_letters = _since(counted, await _deleted(conn))
            if dead_letters and result.first:
                await conn.execute(
                    erasure.ADD_ROWS_REMOVED, organization, orjson.dumps(dead_letters).decode()
                )
            result.rows.update(dead_letters)
            # owed until a broker takes it: the command publishes it below, else the
            # running service does (a refused publish, a command killed before it)
            # due again after a record of it that may still land (its feed debt)
            result.tombstone_owed_since = await conn.fetchval(
                erasure.OWE_FEED_TOMBSTONE, organization, feed_debt_due
            )
            if not result.first:
                result.resumed = bool(await conn.fetchval(erasure.ERASURE_UNFINISHED, organization))
            if not apply:
                raise _DryRun
    except _DryRun:
        result.erased_at = None
        result.tombstone_owed_since = None
    return result


async def _second_step(conn: asyncpg.Connection, results: list[Erasure], apply: bool) -> None:
    """The event ids of a page of organizations, in one scan, and their erasures marked
    finished (rolled back unless `apply`); adds what it removed to `results`."""
    removed: dict[UUID, int] = {}
    try:
        async with conn.transaction():
            rows = await conn.fetch(
                erasure.DELETE_PROCESSED_EVENTS, [result.organization_id for result in results]
            )
            removed = {row["organization_id"]: row["removed"] for row in rows}
            finished = [
                (
                    result.organization_id,
                    orjson.dumps(_event_ids(removed, result.organization_id)).decode(),
                )
                for result in results
                if result.first or result.resumed
            ]
            if finished:
                await conn.executemany(erasure.FINISH_ERASURE, finished)
            if not apply:
                raise _DryRun
    except _DryRun:
        pass
    for result in results:
        for table, count in _event_ids(removed, result.organization_id).items():
            result.rows[table] = result.rows.get(table, 0) + count


def _event_ids(removed: dict[UUID, int], organization: UUID) -> dict[str, int]:
    count = removed.get(organization, 0)
    return {"processed_events": count} if count else {}


async def _retried(step: Callable[[], Awaitable[_T]], organizations: list[UUID]) -> _T:
    for attempt in range(1, ERASE_ATTEMPTS + 1):
        try:
            return await step()
        except (asyncpg.TransactionRollbackError, asyncpg.LockNotAvailableError) as exc:
            if attempt == ERASE_ATTEMPTS:
                raise
            log.warning(
                "erasure_retried",
                organization_id=str(organizations[0]),
                organizations=len(organizations),
                reason=type(exc).__name__,
                attempt=attempt,
            )
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


async def erase_organizations(
    conn: asyncpg.Connection,
    organizations: Sequence[UUID],
    apply: bool,
    on_first_step: Callable[[Erasure], None] | None = None,
) -> list[Erasure]:
    """Erase (or, without `apply`, count) a page of organizations: each one's first
    step in its own transaction, then the event ids of them all in one (at most
    `ERASE_PAGE` organizations, each once); a step that meets a deadlock or its lock
    timeout is run again. `on_first_step` hears of each first step as it commits: a
    page stopped before its second step leaves those erased, unfinished."""
    if len(organizations) > ERASE_PAGE or len(set(organizations)) != len(organizations):
        raise ValueError(f"at most {ERASE_PAGE} organizations, each once")
    results = []
    for organization in organizations:
        result = await _retried(
            functools.partial(_first_step, conn, organization, apply), [organization]
        )
        results.append(result)
        if on_first_step is not None:
            on_first_step(result)
    if results:
        await _retried(functools.partial(_second_step, conn, results, apply), list(organizations))
    if apply:
        for result in results:
            log.info(
                "organization_erased",
                organization_id=str(result.organization_id),
                first=result.first,
                resumed=result.resumed,
                rows=result.rows,
            )
    return results


async def erase_organization(conn: asyncpg.Connection, organization: UUID, apply: bool) -> Erasure:
    """Erase (or, without `apply`, count) one organization."""
    (result,) = await erase_organizations(conn, [organization], apply)
    return result


def format_erasure(result: Erasure, applied: bool) -> list[str]:
    """What one organization's erasure removed (or would remove), per table."""
    verb = "removed" if applied else "would remove"
    if applied and result.resumed:
        state = " (erased before, unfinished: finished now)"
    elif not applied and result.resumed:
        state = " (erased before, unfinished: --yes finishes it)"
    elif applied and not result.first:
        state = " (erased before: its tombstone stays as recorded)"
    elif not applied and not result.first:
        state = " (erased before)"
    else:
        state = ""
    lines = [f"organization {result.organization_id}: {verb} {result.total} row(s){state}"]
    width = max((len(table) for table in result.rows), default=0)
    for table, count in sorted(result.rows.items()):
        lines.append(f"  {table:<{width}} {count:>8}")
    return lines
