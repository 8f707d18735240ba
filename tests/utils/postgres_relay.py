"""A TCP relay between one service process and PostgreSQL that can cut a pipeline.

A client frozen half-way through sending a pipeline leaves its backend with a
statement bound (Bind processed: `pg_stat_activity` says 'active') and waiting on
ClientRead for the Execute and Sync still on the client's side. PostgreSQL's idle
limit does not apply there (nothing said ReadyForQuery); only the transaction's time
limit ends it. Catching a real process at that instant is luck (the kernel takes a
whole batch statement in one write on loopback); the relay makes it certain: armed,
it forwards a connection's messages up to and including a Bind and holds the Execute
and everything after it, as a network path that stops delivering would, until
`resume()`. Real bytes, real server: nothing of PostgreSQL is imitated.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# the startup message's protocol version (3.0); untyped messages come before it
PROTOCOL_3 = 196608


class PostgresRelay:
    """Listen on a local port and relay each connection to PostgreSQL at `host:port`."""

    def __init__(self, host: str, port: int) -> None:
        # a host starting with / is the directory of the server's Unix socket
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._armed: asyncio.Future[None] | None = None
        self._held: _Connection | None = None
        self._connections: set[_Connection] = set()
        self.port = 0

    @classmethod
    async def to(cls, database_url: str) -> PostgresRelay:
        """A started relay to the server `database_url` names."""
        parts = urlsplit(database_url)
        host = dict(parse_qsl(parts.query)).get("host") or parts.hostname or "127.0.0.1"
        relay = cls(host, parts.port or 5432)
        relay._server = await asyncio.start_server(relay._serve, "127.0.0.1", 0)
        relay.port = relay._server.sockets[0].getsockname()[1]
        return relay

    def url(self, database_url: str) -> str:
        """`database_url` through the relay (plain TCP: the relay reads the messages)."""
        parts = urlsplit(database_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        query = dict(parse_qsl(parts.query))
        query.pop("host", None)
        query["sslmode"] = "disable"
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))

    def cut_after_next_bind(self) -> asyncio.Future[None]:
        """Hold the next connection that sends a Bind followed by an Execute from that
        Execute on; the future completes once it is held."""
        assert self._held is None, "one connection held at a time"
        self._armed = asyncio.get_running_loop().create_future()
        return self._armed

    def resume(self) -> None:
        """Disarm; forward what the held connection (if any) kept back, and go on."""
        if self._armed is not None and not self._armed.done():
            self._armed.cancel()
        self._armed = None
        held, self._held = self._held, None
        if held is not None:
            held.release()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _cut(self, connection: _Connection) -> bool:
        if self._armed is None or self._armed.done() or self._held is not None:
            return False
        self._held = connection
        self._armed.set_result(None)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self._target
        try:
            if host.startswith("/"):
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                    f"{host}/.s.PGSQL.{port}"
                )
            else:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        connection = _Connection(self, writer, upstream_writer)
        self._connections.add(connection)
        try:
            await asyncio.gather(
                connection.from_client(reader), connection.to_client(upstream_reader)
            )
        finally:
            self._connections.discard(connection)
            connection.close()


class _Connection:
    def __init__(
        self,
        relay: PostgresRelay,
        client: asyncio.StreamWriter,
        server: asyncio.StreamWriter,
    ) -> None:
        self._relay = relay
        self._client = client
        self._server = server
        self._pending = b""  # the start of a message not yet whole
        self._held: bytearray | None = None
        self._started = False  # past the startup message: messages are typed
        self._last_type = b""

    async def from_client(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self._forward(chunk)
                await self._server.drain()
        self.close()

    async def to_client(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self._client.write(chunk)
                await self._client.drain()
        self.close()

    def _forward(self, chunk: bytes) -> None:
        if self._held is not None:
            self._held += chunk
            return
        data = self._pending + chunk
        start = 0
        while True:
            header = 4 if not self._started else 5
            if len(data) - start < header:
                break
            if self._started:
                kind = data[start : start + 1]
                (length,) = struct.unpack_from("!i", data, start + 1)
                end = start + 1 + length
            else:
                kind = b""
                (length,) = struct.unpack_from("!i", data, start)
                end = start + length
            if len(data) < end:
                break
            if kind == b"E" and self._last_type == b"B" and self._relay._cut(self):
                self._server.write(data[:start])
                self._held = bytearray(data[start:])
                self._pending = b""
                return
            if not self._started and len(data) - start >= 8:
                (code,) = struct.unpack_from("!i", data, start + 4)
                self._started = code == PROTOCOL_3
            self._last_type = kind
            start = end
        self._server.write(data[:start])
        self._pending = data[start:]

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._server.is_closing():
            self._forward(bytes(held))

    def close(self) -> None:
        for writer in (self._client, self._server):
            if not writer.is_closing():
                writer.close()
