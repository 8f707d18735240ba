"""The response cache's ear: a connection that LISTENs to the database's change
announcements (migrations 0050, 0051) and tells the cache which tables changed,
and of which organizations when the announcement names them. It listens on the
channel of the API's signing key (migration 0070), which only a holder of the key
can name.

It runs as the API's database role without a login (LISTEN needs none) on a
connection of its own, outside the pool. The cache serves only while this
connection is known to be live: each round trip on it (every HEARTBEAT) extends
a LEASE, and PostgreSQL sends a listening session every notification of the
transactions committed before a query before that query's answer, so a live
lease means no announced change went unheard for longer than the lease. When
the connection is lost, or a round trip fails or hangs, the cache is cleared and
bypassed at once, every version moves on, and the listener reconnects; after it
is back, every version moves on again (changes made while nobody listened were
not announced to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any, Final

import asyncpg
import structlog

from healthscore.api.cache import CacheState
from healthscore.store import read_model_changes as t
from healthscore.store.db import DatabaseTLS, connect
from healthscore.store.identity import SigningKey

log = structlog.get_logger(__name__)

HEARTBEAT: Final = 1.0  # seconds between round trips on the listening connection
LEASE: Final = 2.5  # the cache serves this long after the last round trip
RECONNECT_DELAYS: Final = (0.2, 0.5, 1.0, 2.0, 5.0)
APPLICATION_NAME: Final = "healthscore-api-listener"


class ReadModelListener:
    def __init__(
        self,
        database_url: str,
        role: str,
        tls: DatabaseTLS,
        signing_key: SigningKey,
        state: CacheState,
    ) -> None:
        self.database_url = database_url
        self.role = role
        self.tls = tls
        self.signing_key_id = signing_key.key_id
        self.channel = t.channel_of(signing_key.secret)
        self.state = state
        self.live = asyncio.Event()  # set while connected (the lease may still lapse)
        self._wake = asyncio.Event()
        self._key_check_due = True
        self._settling: list[asyncio.Future[None]] = []

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost."""
        failures = 0
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(
                    self.database_url,
                    self.tls,
                    server_settings={"application_name": APPLICATION_NAME, "role": self.role},
                )
                conn.add_termination_listener(self._closed)
                await conn.add_listener(self.channel, self._heard)
                self._key_check_due = True
                await self._round_trip(conn)
                # what changed while nobody listened was announced to nobody
                self.state.changed_everything()
                self.live.set()
                self.state.metrics.cache_listener_up.set(1)
                if failures:
                    log.info("api_cache_listener_back", after_failures=failures)
                failures = 0
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(HEARTBEAT):
                            await self._wake.wait()
                    self._wake.clear()
                    if conn.is_closed():
                        raise ConnectionError("the listening connection was closed")
                    await self._round_trip(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                was_live = self.live.is_set()
                self.live.clear()
                self.state.blind()
                self.state.metrics.cache_listener_up.set(0)
                if was_live:
                    self.state.metrics.cache_listener_losses.inc()
                if was_live or failures == 0:
                    log.warning(
                        "api_cache_listener_lost" if was_live else "api_cache_listener_unavailable",
                        error=f"{type(exc).__name__}: {str(exc)[:200]}",
                        effect="the response cache is cleared and bypassed until it is back",
                    )
                failures += 1
                await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1])
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()

    async def settle(self) -> None:
        """Return once every change committed before the call has been heard."""
        waiter = asyncio.get_running_loop().create_future()
        self._settling.append(waiter)
        self._wake.set()
        await waiter

    async def _round_trip(self, conn: asyncpg.Connection) -> None:
        settling, self._settling = self._settling, []
        try:
            async with asyncio.timeout(HEARTBEAT):
                await self._check_key(conn)
                await conn.fetchval(t.ROUND_TRIP)
                # a key's change heard with that answer is read now, not a round trip
                # later: a settled listener has the retirement time the change set
                await self._check_key(conn)
        except BaseException:
            self._settling.extend(settling)
            raise
        # notifications that arrived with the answer are dispatched before we resume
        self.state.live(time.monotonic() + LEASE)
        for waiter in settling:
            if not waiter.done():
                waiter.set_result(None)

    async def _check_key(self, conn: asyncpg.Connection) -> None:
        """Read the signing key's retirement time again if a change of it was heard."""
        if self._key_check_due:
            self._key_check_due = False
            retires_at = await conn.fetchval(t.SIGNING_KEY_RETIRES_AT, self.signing_key_id)
            self.state.key_retires_at = -math.inf if retires_at is None else retires_at

    def _heard(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        table, organizations = t.organizations_changed(str(payload))
        self.state.changed(table, organizations)
        if table == t.SIGNING_KEYS:
            # serve nothing until the key's retirement time is read again
            self.state.key_retires_at = -math.inf
            self._key_check_due = True
            self._wake.set()

    def _closed(self, conn: Any) -> None:
        self.state.blind()
        self._wake.set()
