"""A small HTTP/1.1 server for the ops endpoints, on the service's own event loop.

The endpoints answer GET (and HEAD) for a handful of paths with bodies that are
already rendered (`ops.http.OpsApp`), so the HTTP exchange is all a request
costs, and it is taken from the consumer, which shares the loop. A general
server is most of that cost (uvicorn and h11 took several times the CPU per
request of this protocol, which parses the request line, looks at the three
headers it needs and answers with one write; figures in the README).

What it does: keep-alive (HTTP/1.1 by default, HTTP/1.0 with
`Connection: keep-alive`), `Connection: close`, pipelined requests answered in
order, HEAD without a body. What it refuses, then closes the connection:
a malformed request line or another HTTP version (400), a request with a body
(400; the endpoints take none), a header block over 8 KiB (431). A connection
idle for `idle_timeout` seconds, or sending a request slower than that, is
closed. Writes wait while the client does not read (transport flow control),
and a connection stops reading while it has more than a few requests queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import structlog

MAX_HEADER_BYTES = 8 * 1024
MAX_QUEUED = 8  # pipelined requests one connection may have waiting

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes


Handler = Callable[[str, str], Awaitable[Response]]  # (method, path) -> response

INTERNAL_ERROR = Response(500, "application/json", b'{"error":"internal error"}')


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    keep_alive: bool


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def render(response: Response, keep_alive: bool, head: bool = False) -> bytes:
    """Status line, headers and body as one buffer: one write per response."""
    status = HTTPStatus(response.status)
    head_lines = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        f"content-type: {response.content_type}\r\n"
        f"content-length: {len(response.body)}\r\n"
        "cache-control: no-store\r\n" + ("" if keep_alive else "connection: close\r\n") + "\r\n"
    )
    return head_lines.encode("latin-1") + (b"" if head else response.body)


def parse_request(block: bytes) -> _Request:
    """One request's header block (without the blank line that ends it)."""
    lines = block.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1].startswith(b"/"):
        raise _BadRequest(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _BadRequest(400, "HTTP/1.0 and HTTP/1.1 only")
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        name = name.strip().lower()
        if name == b"connection":
            connection = value.strip().lower()
        elif name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            raise _BadRequest(400, "these endpoints take no request body")
    if version == b"HTTP/1.1":
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection
    path = target.split(b"?", 1)[0].decode("latin-1")
    return _Request(method.decode("latin-1"), path, keep_alive)


class _Connection(asyncio.Protocol):
    def __init__(self, server: OpsServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._queue: deque[_Request | _BadRequest] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading = True
        self._closing = False
        self._idle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass)
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self._touch()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        """Queue the complete requests in the buffer (a few at a time), start answering."""
        parsed = False
        while not self._closing and len(self._queue) < MAX_QUEUED:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0 and len(self._buffer) <= MAX_HEADER_BYTES:
                break
            if end < 0 or end > MAX_HEADER_BYTES:
                self._refuse(_BadRequest(431, "request header block too large"))
                break
            block, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            try:
                self._queue.append(parse_request(block.lstrip(b"\r\n")))
                parsed = True
            except _BadRequest as bad:
                self._refuse(bad)  # what follows a bad request cannot be trusted
        transport = self._transport
        if transport is not None:
            # a client that pipelines faster than it is answered waits in its socket
            if self._reading and len(self._queue) >= MAX_QUEUED:
                transport.pause_reading()
                self._reading = False
            elif not self._reading and len(self._queue) < MAX_QUEUED and not self._closing:
                transport.resume_reading()
                self._reading = True
        if self._queue and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._answer())
        if parsed:
            self._touch()

    def _refuse(self, bad: _BadRequest) -> None:
        self._queue.append(bad)
        self._closing = True
        self._buffer = b""

    def eof_received(self) -> bool | None:
        # answer what was asked, then close (the client half-closed)
        self._closing = True
        if self._worker is None and self._transport is not None:
            self._transport.close()
        return True

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._worker is not None:
            self._worker.cancel()
        self._writable.set()

    # -- answering

    async def _answer(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._queue:
                request = self._queue.popleft()
                if isinstance(request, _BadRequest):
                    body = f'{{"error":"{request}"}}'.encode()
                    response = Response(request.status, "application/json", body)
                    transport.write(render(response, keep_alive=False))
                    transport.close()
                    return
                try:
                    response = await self._server.handler(request.method, request.path)
                except Exception as exc:  # a bug in a handler: answer it, keep serving
                    log.error("ops_request_failed", path=request.path, error=repr(exc)[:300])
                    request = _Request(request.method, request.path, keep_alive=False)
                    response = INTERNAL_ERROR
                last = self._closing and not self._queue
                keep_alive = request.keep_alive and not last
                await self._writable.wait()
                if transport.is_closing():
                    return
                transport.write(render(response, keep_alive, head=request.method == "HEAD"))
                if not keep_alive:
                    transport.close()
                    return
                self._touch()
                self._parse()  # requests left in the buffer while the queue was full
            if self._closing:
                transport.close()
        finally:
            self._worker = None

    def _touch(self) -> None:
        """(Re)start the idle timer: no complete request or answer for a while closes."""
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._server.idle_timeout, self._expire)

    def _expire(self) -> None:
        if self._worker is None and self._transport is not None:
            self._transport.close()
        else:
            self._touch()  # an answer is waiting its turn: not idle

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class OpsServer:
    """Serves `handler` on host:port until `close()`; `port` is the bound port."""

    def __init__(self, handler: Handler, idle_timeout: float = 60.0) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(
        self, host: str | None = None, port: int | None = None, sock: socket.socket | None = None
    ) -> None:
        """Listen on host:port, or on `sock`, bound already (port 0: any free port)."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _Connection(self), host, port or 0)
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
