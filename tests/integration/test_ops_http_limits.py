"""The ops port's HTTP server (`serve`'s /metrics, /healthz, /readyz) under the same
bounds as the API's: a head past MAX_HEAD_BYTES is refused with 431, a request slower
than READ_TIMEOUT with 408, both in plain text. Before, the ops server took a head of
any size and waited for a slow one as long as its client liked.

The real server code (`service.ops.serving`) on a real socket, spoken to as a hostile
client would; READ_TIMEOUT is shortened so that the slow case takes a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest

from healthscore import http_limits
from healthscore.http_limits import MAX_HEAD_BYTES
from healthscore.service.ops.serving import bind_ops_socket, serve
from tests.integration.test_api_http_limits import answer


async def _healthz(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    length = [(b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_limits, "READ_TIMEOUT", 1.0)
    sock = bind_ops_socket("127.0.0.1", 0)
    bound = int(sock.getsockname()[1])
    async with serve(_healthz, sock):
        yield bound


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


async def test_the_ops_port_holds_at_most_its_cap_of_connections(port: int) -> None:
    """Only Prometheus and the kubelet should reach it: OPS_MAX_CONNECTIONS at once; one
    more is answered 503 in plain text as it opens, and closed."""
    held = [
        await asyncio.open_connection("127.0.0.1", port)
        for _ in range(http_limits.OPS_MAX_CONNECTIONS)
    ]
    try:
        status, headers, body = await _exchange(port)
        assert status == 503, body
        assert headers["content-type"].startswith("text/plain") and headers["retry-after"] == "1"
        reader, writer = held.pop()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert (await answer(reader))[0] == 200
        writer.close()
    finally:
        for _, writer in held:
            writer.close()
