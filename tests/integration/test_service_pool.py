"""The service's pool between uses: only a rollback, no reset round trip.

Real PostgreSQL. asyncpg's default reset (`RESET ALL`, `CLOSE ALL`, `UNLISTEN *`,
`pg_advisory_unlock_all()`) would be one more round trip per transaction; the
pool skips it (`rollback_only_reset`), which is safe only while nothing the
service runs leaves session state behind. These tests hold both halves: a
released connection sends no reset statement, and what the service does set
(transaction-local settings and advisory locks, a transaction left open by a
failure) does not outlive the use.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from contextvars import ContextVar

import asyncpg
import pytest

from healthscore.store import locks, sql
from healthscore.store.db import create_pool, opened, service_pool

pytestmark = pytest.mark.asyncio


async def test_release_sends_no_reset_statement(migrated_database: str) -> None:
    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=1)
    try:
        sent: list[str] = []
        async with pool.acquire() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
            await conn.fetchval("SELECT 1")
        # the same connection (one in the pool): its logger is still there
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetchval("SELECT 2")
        assert sent == ["SELECT 1", "BEGIN;", "SELECT 2", "COMMIT;"]
    finally:
        await pool.close()


class _Batch:
    """Stands for what FastStream keeps in a context variable while a batch runs: its
    message, and every record in it."""


_current_batch: ContextVar[_Batch | None] = ContextVar("current_batch", default=None)


async def test_a_use_keeps_nothing_of_its_context_alive(migrated_database: str) -> None:
    """asyncpg schedules a new statement's expiry with the context it is prepared in;
    the pool's statements do not expire, so a batch is freed when it ends, not five
    minutes later."""
    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=1)
    try:
        batch = _Batch()
        freed = weakref.ref(batch)
        # taken and given back outside the batch: the idle close's timer, scheduled as a
        # connection is released, is not what this test is about
        async with pool.acquire() as conn:

            async def use(held: _Batch) -> None:
                token = _current_batch.set(held)
                async with conn.transaction():
                    # a statement new to the connection: prepared and cached
                    await conn.fetchval("SELECT $1::int + 1", 1)
                # as FastStream does after the handler: only a copy of the context
                # taken meanwhile (a timer's) still holds the batch
                _current_batch.reset(token)

            task = asyncio.create_task(use(batch))  # its own context, as a handler's
            await task
            del task, batch
            assert await conn.fetchval("SELECT $1::int + 1", 2) == 3
        for _ in range(3):  # the loop's own references to the finished task go
            await asyncio.sleep(0)
        gc.collect()
        assert freed() is None
    finally:
        await pool.close()


async def test_nothing_the_service_sets_outlives_a_use(migrated_database: str) -> None:
    pool = await create_pool(migrated_database, "healthscore_writer", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            default = await conn.fetchval("SHOW idle_in_transaction_session_timeout")
            time_limit = await conn.fetchval("SHOW transaction_timeout")
            async with conn.transaction():
                await conn.execute(sql.BOUND_HELD_TRANSACTION, "5s")
                assert await conn.fetchval(sql.TRY_SHARD_LOCK, locks.PROJECTOR_SHARD, 0)
            # a use that fails inside a transaction it never ends
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(sql.BOUND_HELD_TRANSACTION, "7s")
            assert await conn.fetchval(sql.TRY_SHARD_LOCK, locks.PROJECTOR_SHARD, 1)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == default
            assert await conn.fetchval("SHOW transaction_timeout") == time_limit
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert held == 0
            assert await conn.fetchval("SELECT current_user") == "healthscore_writer"
    finally:
        await pool.close()


async def test_a_transaction_past_the_time_limit_loses_its_session(migrated_database: str) -> None:
    """TRANSACTION_TIME_LIMIT_SECONDS (PostgreSQL 17+, the tests' server is 18): a
    transaction that lasts longer, an active statement in it, loses its session; one
    that bounds itself for a longer wait (the relay) runs past the session's limit,
    and the next transaction has the session's limit again."""
    pool = service_pool(
        migrated_database, "healthscore_writer", min_size=1, max_size=1, transaction_time_limit=1.0
    )
    async with opened(pool, "healthscore_writer"):
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW transaction_timeout") == "1s"
            async with conn.transaction():
                await conn.execute(sql.BOUND_HELD_TRANSACTION, "5s")
                await conn.execute("SELECT pg_sleep(2)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW transaction_timeout") == "1s"
            ended = conn.get_server_pid()
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                async with conn.transaction():
                    # active, not idle: what idle_in_transaction_session_timeout leaves
                    await conn.execute("SELECT pg_sleep(2)")
        async with pool.acquire() as conn:  # a new session, bounded as well
            assert conn.get_server_pid() != ended
            assert await conn.fetchval("SHOW transaction_timeout") == "1s"
