"""The ops port's HTTP server (`serve`'s /metrics, /healthz, /readyz) under the same
bounds as the API's: a head past MAX_HEAD_BYTES is refused with 431, a request slower
than READ_TIMEOUT with 408, both in plain text. Before, the ops server took a head of
any size and waited for a slow one as long as its client liked.

Its cap of connections once let idle ones keep every other client out: connections
that sent nothing, opened again as the read deadline closed each, had the liveness
probe's /healthz answered 503 for as long as they liked (40 s measured, past the
kubelet's 3 x 10 s). At the cap the one idle the longest is closed now to make room;
only connections owed an answer keep a newcomer out (503).

The real server code (`service.ops.serving`) on a real socket, spoken to as a hostile
client would; READ_TIMEOUT is shortened so that the slow case takes a second (and
lengthened where only the cap may close a connection).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from healthscore import http_limits
from healthscore.http_limits import MAX_HEAD_BYTES, OPS_MAX_CONNECTIONS
from healthscore.service.ops.serving import bind_ops_socket, serve
from tests.integration.test_api_http_limits import PATIENCE, answer

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _healthz(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    length = [(b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})


class _Gate:
    """An app holding each request for /held until `open` is set, then answering as
    /healthz does (as it answers every other path at once)."""

    def __init__(self) -> None:
        self.held = 0
        self.open = asyncio.Event()
        self._arrived = asyncio.Event()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/held":
            self.held += 1
            self._arrived.set()
            await self.open.wait()
        await _healthz(scope, receive, send)

    async def holding(self, requests: int) -> None:
        """Until the app holds `requests` requests (their heads in, unanswered)."""
        async with asyncio.timeout(PATIENCE):
            while self.held < requests:
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[int]:
    sock = bind_ops_socket("127.0.0.1", 0)
    bound = int(sock.getsockname()[1])
    async with serve(app, sock):
        yield bound


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_limits, "READ_TIMEOUT", 1.0)
    async with _serving(_healthz) as bound:
        yield bound


@pytest.fixture
async def gate(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[int, _Gate]]:
    # no deadline closes a connection during the test: only the cap may
    monkeypatch.setattr(http_limits, "READ_TIMEOUT", 60.0)
    app = _Gate()
    try:
        async with _serving(app) as bound:
            yield bound, app
    finally:
        app.open.set()  # nothing left waiting on the server's stop


async def _exchange(port: int, *parts: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
        await writer.drain()
        return await answer(reader)
    finally:
        writer.close()


async def test_the_ops_port_refuses_a_head_over_its_bound_and_a_slow_request(port: int) -> None:
    head = b"GET /metrics HTTP/1.1\r\nHost: ops\r\nX-Pad: "
    status, headers, body = await _exchange(port, head, b"a" * (MAX_HEAD_BYTES + 1024))
    assert status == 431, body
    assert headers["content-type"].startswith("text/plain") and headers["connection"] == "close"
    assert str(MAX_HEAD_BYTES).encode() in body

    status, headers, body = await _exchange(port, b"GET /readyz HTTP/1.1\r\nHost: ops\r\nX-S: a")
    assert status == 408, body

    # a request within both bounds is served as before
    pad = b"a" * (MAX_HEAD_BYTES - 1024)
    close = b"GET /healthz HTTP/1.1\r\nHost: ops\r\nConnection: close\r\nX-Pad: "
    status, _, body = await _exchange(port, close, pad, b"\r\n\r\n")
    assert (status, body) == (200, b'{"status":"ok"}')


async def _held(port: int, path: str) -> Connection:
    """A connection whose request for `path` (kept alive) is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: ops\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _answered(reader: asyncio.StreamReader) -> bytes:
    """The status line of the first answer on a kept-alive connection, read whole."""
    async with asyncio.timeout(PATIENCE):
        line = await reader.readline()
        while (await reader.readline()) != b"\r\n":
            pass
        await reader.readexactly(len(b'{"status":"ok"}'))
    return line


async def test_connections_owed_an_answer_are_kept_and_keep_a_newcomer_out(
    gate: tuple[int, _Gate],
) -> None:
    """OPS_MAX_CONNECTIONS at once: when every one held has sent a whole request and
    waits for its answer, one more is answered 503 in plain text as it opens, and
    closed; none of those held is closed for it, and each is answered."""
    port, app = gate
    held = [await _held(port, "/held") for _ in range(OPS_MAX_CONNECTIONS)]
    try:
        await app.holding(OPS_MAX_CONNECTIONS)
        for _ in range(2):  # refused again: the count is of connections open now
            status, headers, body = await _exchange(port)
            assert status == 503, body
            assert headers["content-type"].startswith("text/plain")
            assert headers["retry-after"] == "1" and str(OPS_MAX_CONNECTIONS).encode() in body
        app.open.set()
        for reader, _ in held:
            assert (await _answered(reader)).startswith(b"HTTP/1.1 200")
    finally:
        for _, writer in held:
            writer.close()


async def test_at_the_cap_an_idle_connection_makes_room_and_none_owed_an_answer_does(
    gate: tuple[int, _Gate],
) -> None:
    """At the cap, the connection that sent nothing is closed (plainly, no answer) to
    let the newcomer in, not one of those whose request is in and being answered."""
    port, app = gate
    idle = await asyncio.open_connection("127.0.0.1", port)
    held = [await _held(port, "/held") for _ in range(OPS_MAX_CONNECTIONS - 1)]
    try:
        await app.holding(OPS_MAX_CONNECTIONS - 1)
        with capture_logs() as logs:
            status, _, body = await _exchange(
                port, b"GET /healthz HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n"
            )
        assert (status, body) == (200, b'{"status":"ok"}')
        async with asyncio.timeout(PATIENCE):
            assert await idle[0].read() == b""  # closed, nothing written
        evicted = [e for e in logs if e["event"] == "http_connections_evicted"]
        assert evicted == [
            {
                "event": "http_connections_evicted",
                "log_level": "warning",
                "max_connections": OPS_MAX_CONNECTIONS,
                "evicted": 1,
            }
        ]
        app.open.set()
        for reader, _ in held:
            assert (await _answered(reader)).startswith(b"HTTP/1.1 200")
    finally:
        idle[1].close()
        for _, writer in held:
            writer.close()


async def test_idle_connections_held_at_the_cap_do_not_keep_the_liveness_probe_out(
    port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's attack: OPS_MAX_CONNECTIONS connections that send nothing, each
    opened again the moment the server closes it. /healthz is answered while they are
    held (before, it was answered 503 until they let go)."""
    monkeypatch.setattr(http_limits, "READ_TIMEOUT", 60.0)  # only the cap closes them
    closed_by_server = 0
    writers: set[asyncio.StreamWriter] = set()

    async def hold() -> None:
        nonlocal closed_by_server
        while True:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.add(writer)
            try:
                await reader.read()  # until the server closes it: at once again
            except ConnectionError:
                pass
            finally:
                writer.close()
                writers.discard(writer)
            closed_by_server += 1

    attackers = [asyncio.create_task(hold()) for _ in range(OPS_MAX_CONNECTIONS)]
    try:
        async with asyncio.timeout(PATIENCE):
            while len(writers) < OPS_MAX_CONNECTIONS:  # noqa: ASYNC110 (opened by the tasks)
                await asyncio.sleep(0.01)
        probe = b"GET /healthz HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n"
        answers = []
        for _ in range(10):
            status, _, body = await _exchange(port, probe)
            answers.append(status)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert answers[-1] == 200 and body == b'{"status":"ok"}', answers
        # the cap was reached: an idle one made room (and its attacker came back)
        async with asyncio.timeout(PATIENCE):
            while closed_by_server == 0:  # noqa: ASYNC110 (counted by the tasks)
                await asyncio.sleep(0.01)
    finally:
        for attacker in attackers:
            attacker.cancel()
        await asyncio.gather(*attackers, return_exceptions=True)
        for writer in writers:
            writer.close()
