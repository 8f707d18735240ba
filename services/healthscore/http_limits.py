"""Bounds on what one HTTP connection may make a server hold, in time and in memory.

uvicorn's httptools protocol buffers a request's head without a limit (one header of
200 MB was taken whole, the process growing by 400 MB: a pod's limit is 256 MiB) and
waits for the head and the body as long as the client keeps the connection open
(a request sent a byte a second held its connection and its task for as long as the
client liked; its keep-alive timeout applies only between requests). Every client
reaches the server before any credential is checked, so both bounds are the
server's; both HTTP servers use them (the read API, `healthscore.api.server`, and
the ops port of either process):

* a request's head (request line and headers) is MAX_HEAD_BYTES at most: a larger
  one is answered 431 and the connection closed, after at most one more read;
* a request is READ_TIMEOUT seconds at most from its first byte to its last (or, on
  a new connection, from its opening): a slower one is answered 408 (or, when its
  answer has begun, its connection is just closed).

* a server holds `max_connections` connections at most (`capped`), so a flood of idle
  connections cannot take the file descriptors the process needs for its database
  and broker connections (uvicorn's own `limit_concurrency` answers only once a
  request's head has arrived, holding the connection until then). One more makes
  room by closing the held connection idle the longest: one the server owes nothing
  (no request, or only part of a head, since it opened or since its last answer
  went out whole); when every one held is owed an answer (a whole head in, its
  answer not yet written out), the new one is answered 503 with Retry-After the
  moment it opens, and closed. Before, connections that sent nothing, opened again
  as each reached the read deadline, held every place: the kubelet's liveness probe
  was answered 503 for as long as they liked.

The answer's body is plain text here; the API answers problem documents instead
(`healthscore.api.server.ProblemHttpProtocol`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, Self

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger(__name__)

# a bearer JWT is one or two kilobytes; browsers send a few more headers
MAX_HEAD_BYTES: Final = 32 * 1024
# a request's head and its body (the API's are 16 KiB at most) arrive within this
READ_TIMEOUT = 15.0

# a path is shown (a problem's `instance`, a log line) up to this many characters
# (the API's longest is 112): anybody may send one of 64 KiB, echoed whole in every
# 404, and a log line that long is split by container log drivers (16 KiB) into
# pieces no longer parsed as JSON
MAX_SHOWN_PATH: Final = 300

# the ops ports' cap: only Prometheus and the kubelet's probes should reach them
OPS_MAX_CONNECTIONS: Final = 32
# a refused connection is told to come back after this many seconds
RETRY_AFTER_SECONDS: Final = 1
# refusals for too many connections, and idle connections closed to make room, are
# logged once in this many seconds each, with a count
REFUSALS_LOGGED_EVERY_SECONDS: Final = 1.0


def shown_path(path: str) -> str:
    if len(path) <= MAX_SHOWN_PATH:
        return path
    return f"{path[:MAX_SHOWN_PATH]}...(+{len(path) - MAX_SHOWN_PATH} characters)"


_REASONS: Final = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with MAX_HEAD_BYTES and READ_TIMEOUT (see above)."""

    # the log line of a refused connection (the access log cannot see it)
    refused_event = "http_connection_refused"
    # the log line of connections refused past the cap (one a second at most)
    crowded_event = "http_connections_refused"
    # connections held at once; None: no cap (set by `capped`)
    max_connections: int | None = None
    # refusals for too many connections since the last such log line, and its time
    _unlogged_refusals = 0
    _refusal_logged_at = float("-inf")
    # idle connections closed to make room since the last such log line, and its time
    _unlogged_evictions = 0
    _eviction_logged_at = float("-inf")

    @classmethod
    def capped(cls, connections: int) -> type[Self]:
        """This protocol holding at most `connections` connections of its server."""
        return type(cls.__name__, (cls,), {"max_connections": connections})

    def refusal_body(
        self, status: int, kind: str, detail: str, instance: str | None
    ) -> tuple[str, bytes]:
        """The refusal's media type and body; `instance` is the request's path, None
        when it is not known (a head refused unread)."""
        return "text/plain; charset=utf-8", f"{detail}\n".encode()

    def _answer(self, status: int, kind: str, detail: str, instance: str | None) -> bytes:
        """The refusal's bytes, logged."""
        log.info(
            self.refused_event,
            status=status,
            reason=kind,
            path=None if instance is None else shown_path(instance),
        )
        return self._refusal(status, kind, detail, instance)

    def _refusal(
        self, status: int, kind: str, detail: str, instance: str | None, head: bytes = b""
    ) -> bytes:
        """The refusal's bytes (`head`: more header lines)."""
        media_type, body = self.refusal_body(status, kind, detail, instance)
        return b"".join(
            (
                b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                b"content-type: " + media_type.encode() + b"\r\n",
                b"content-length: %d\r\n" % len(body),
                head,
                b"connection: close\r\n\r\n",
                body,
            )
        )

    def _too_many_connections(self) -> bytes:
        # a flood would log a line per connection: one a second, with the count
        cls = type(self)
        cls._unlogged_refusals += 1
        now = time.monotonic()
        if now - cls._refusal_logged_at >= REFUSALS_LOGGED_EVERY_SECONDS:
            log.warning(
                self.crowded_event,
                max_connections=self.max_connections,
                refused=cls._unlogged_refusals,
            )
            cls._unlogged_refusals, cls._refusal_logged_at = 0, now
        return self._refusal(
            503,
            "too-many-connections",
            f"this server holds {self.max_connections} connections at most: "
            f"try again in {RETRY_AFTER_SECONDS} s",
            None,
            head=b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS,
        )

    def _make_room(self) -> bool:
        """Close the held connection idle the longest (`_idle`) to make room for this
        one; False when every other one is owed an answer."""
        # O(connections), only at the cap: the set is uvicorn's, unordered
        oldest: BoundedHttpProtocol | None = None
        for other in self.connections:
            if (
                isinstance(other, BoundedHttpProtocol)
                and other is not self
                and other._idle()
                and (oldest is None or other._idle_since < oldest._idle_since)
            ):
                oldest = other
        if oldest is None:
            return False
        # a plain close, as uvicorn's keep-alive timeout does: no request of its is
        # outstanding, and an answer written now could be read, by a client sending
        # on its kept-alive connection at this moment, as the answer to that request
        oldest.transport.close()
        cls = type(self)
        cls._unlogged_evictions += 1
        now = time.monotonic()
        if now - cls._eviction_logged_at >= REFUSALS_LOGGED_EVERY_SECONDS:
            log.warning(
                "http_connections_evicted",
                max_connections=self.max_connections,
                evicted=cls._unlogged_evictions,
            )
            cls._unlogged_evictions, cls._eviction_logged_at = 0, now
        return True

    def _idle(self) -> bool:
        """The server owes this connection nothing: no request of its has its head in
        and its answer not yet written out whole (a connection that sent nothing, part
        of a head, or whose last answer went out: kept alive, or its body still coming
        after the answer)."""
        return (
            (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
            # an answer still in the write buffer is being delivered
            and not self.transport.get_write_buffer_size()
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        # bytes received since the current head began (its request's first byte)
        self._head_bytes = 0
        self._reading_head = True
        # since when the server has owed this connection nothing (`_idle`)
        self._idle_since = self.loop.time()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # the server's open connections, this one included
        if (
            self.max_connections is not None
            and len(self.connections) > self.max_connections
            and not self._make_room()
        ):
            self._refuse(self._too_many_connections())
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > MAX_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            self._refuse(
                self._answer(
                    431,
                    "header-fields-too-large",
                    f"a request's line and headers are {MAX_HEAD_BYTES} bytes at most",
                    None,  # its path may not have arrived whole
                )
            )

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(READ_TIMEOUT, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        current = self.cycle is not None and not self.cycle.response_complete
        if current and self.cycle.response_started:
            self.transport.close()  # answered already (a refusal before the body)
            return
        self._refuse(
            self._answer(
                408,
                "request-timeout",
                f"a request is sent in {READ_TIMEOUT:g} seconds at most",
                self.scope.get("path") if current else None,
            )
        )

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the route's answer, if any, goes nowhere
        self.transport.write(answer)
        self.transport.close()
