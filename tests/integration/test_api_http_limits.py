"""The served API: what one connection can make it hold (the head's size, the request's
time), and what its port answers to anyone who reaches it.

The real `healthscore api` server (uvicorn with its settings, `healthscore.api.server`)
over a real cs_dashboard login, spoken to over a raw socket as a hostile client
would: a head that never ends, a body a byte at a time, a connection that says
nothing. READ_TIMEOUT is shortened so that the slow cases take a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from healthscore import http_limits
from healthscore.api.server import Listening, serve_until, wait_stopped
from healthscore.http_limits import MAX_HEAD_BYTES
from tests.utils.api import api_config, api_login

# the longest a test waits for an answer that must come (the deadline is 1 s here)
PATIENCE = 30.0
REWARD = "/api/v1/organizations/00000000-0000-0000-0000-000000000000/milestones/clients_10/reward"


@pytest.fixture
async def listening(
    migrated_database: str, pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Listening]:
    monkeypatch.setattr(http_limits, "READ_TIMEOUT", 1.0)
    async with api_login(pg_admin_url, migrated_database) as login_url:
        stop = asyncio.Event()
        listening = await serve_until(
            await api_config(migrated_database, login_url), "127.0.0.1", 0, stop, ops_port=0
        )
        try:
            yield listening
        finally:
            stop.set()
            await wait_stopped()


@pytest.fixture
def port(listening: Listening) -> int:
    return int(listening.api.rsplit(":", 1)[1])


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the one answer before the server closes."""
    async with asyncio.timeout(PATIENCE):
        raw = await reader.read()  # until the server closes the connection
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def assert_problem(
    status: int, headers: dict[str, str], body: bytes, expected: int
) -> dict[str, Any]:
    assert status == expected, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == expected and problem["title"] and problem["detail"]
    return problem


async def test_a_head_over_its_bound_is_refused_without_reading_on(port: int) -> None:
    """One header of 200 MB was taken whole (the process grew by 400 MB; the pod's
    limit is 256 MiB): now a head past MAX_HEAD_BYTES is answered 431 and the
    connection closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /api/healthz HTTP/1.1\r\nHost: api\r\nX-Pad: ")
        writer.write(b"a" * (MAX_HEAD_BYTES + 1024))  # no end of the head: it would go on
        await writer.drain()
        problem = assert_problem(*await answer(reader), 431)
        assert problem["type"].endswith("/header-fields-too-large")
        assert "instance" not in problem
    finally:
        writer.close()
    # a head within the bound is served as before
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        pad = b"a" * (MAX_HEAD_BYTES - 1024)
        writer.write(b"GET /api/healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\nX-Pad: ")
        writer.write(pad + b"\r\n\r\n")
        await writer.drain()
        status, _, _ = await answer(reader)
        assert status == 200
    finally:
        writer.close()


async def test_a_body_sent_a_byte_at_a_time_is_cut_off_at_the_deadline(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0

    async def trickle() -> None:  # 100 s for the whole body, without a deadline
        nonlocal sent
        writer.write(
            f"POST {REWARD} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            "Content-Length: 200\r\n\r\n".encode()
        )
        while sent < 200:
            writer.write(b" ")
            await writer.drain()
            sent += 1
            await asyncio.sleep(0.5)

    sending = asyncio.create_task(trickle())
    try:
        problem = assert_problem(*await answer(reader), 408)
        assert sent < 200, "the whole body was taken"
        assert problem["type"].endswith("/request-timeout") and problem["instance"] == REWARD
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sending
        writer.close()


async def test_a_head_that_never_ends_and_a_silent_connection_are_closed(port: int) -> None:
    for opening in (b"GET /api/healthz HTTP/1.1\r\nHost: api\r\nX-Slow: a", b""):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(opening)
            await writer.drain()
            problem = assert_problem(*await answer(reader), 408)
            assert "instance" not in problem
        finally:
            writer.close()


async def test_a_kept_alive_connection_waits_for_its_next_request_past_the_deadline(
    port: int,
) -> None:
    """The deadline is a request's own: between requests the keep-alive timeout rules."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for connection in ("keep-alive", "close"):
            writer.write(
                b"GET /api/healthz HTTP/1.1\r\nHost: api\r\nConnection: %s\r\n\r\n"
                % connection.encode()
            )
            await writer.drain()
            if connection == "keep-alive":
                async with asyncio.timeout(PATIENCE):
                    line = await reader.readline()
                    while (await reader.readline()) != b"\r\n":
                        pass
                    await reader.readexactly(len(b'{"status":"ok"}'))
                assert line.startswith(b"HTTP/1.1 200")
                await asyncio.sleep(2 * http_limits.READ_TIMEOUT)
        status, _, body = await answer(reader)
        assert status == 200 and body == b'{"status":"ok"}'
    finally:
        writer.close()


async def get(address: str, path: str) -> tuple[int, bytes]:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status, _, body = await answer(reader)
    finally:
        writer.close()
    return status, body


async def test_the_prometheus_exposition_is_on_the_ops_port_only(listening: Listening) -> None:
    """/api/metrics answered whoever reached the API port (through the Ingress: anyone),
    while the NetworkPolicy let only the ingress controller reach it, not Prometheus.
    The exposition is on API_OPS_PORT now, the port only the monitoring reaches."""
    assert (await get(listening.api, "/api/healthz"))[0] == 200
    assert (await get(listening.api, "/api/metrics"))[0] == 404
    assert listening.ops is not None
    status, body = await get(listening.ops, "/metrics")
    assert status == 200 and b"healthscore_api_requests_total" in body
    # the API's own registry: it counted the 404 above
    assert b'healthscore_api_requests_total{route="other",status="404"} 1.0' in body
    assert (await get(listening.ops, "/api/v1/me"))[0] == 404  # nothing but the metrics


async def test_connections_past_the_cap_close_an_idle_one_or_are_refused(
    migrated_database: str, pg_admin_url: str
) -> None:
    """Connections were not capped: a flood of idle ones held a file descriptor each
    (the process's limit is often 1024, its database pool's included) for as long as
    the read deadline. The API holds API_MAX_CONNECTIONS at most. One more closes the
    one held idle the longest (no byte written to it) to get in, so idle connections
    cannot keep the liveness probe out (review 37b, M3); when every one held is owed an
    answer, it is answered 503 with Retry-After the moment it opens, and closed."""
    cap = 3
    async with api_login(pg_admin_url, migrated_database) as login_url:
        config = dataclasses.replace(
            await api_config(migrated_database, login_url), max_connections=cap
        )
        stop = asyncio.Event()
        listening = await serve_until(config, "127.0.0.1", 0, stop)
        port = int(listening.api.rsplit(":", 1)[1])
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
        try:
            assert (await get(listening.api, "/api/healthz"))[0] == 200
            # the oldest of those held made room: closed without a byte written
            async with asyncio.timeout(PATIENCE):
                assert await held[0][0].read() == b""
            held[0][1].close()
            # a place freed is taken without closing another
            assert (await get(listening.api, "/api/healthz"))[0] == 200
            # those left are served
            for reader, writer in held[1:]:
                writer.write(b"GET /api/healthz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
                await writer.drain()
                assert (await answer(reader))[0] == 200
                writer.close()
            # every connection held owed an answer (a request whose body is still to come)
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(cap)]
            owed = b"POST /api/healthz HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\n"
            for _, writer in held:
                writer.write(owed)
                await writer.drain()
            # their heads read (nothing signals it; the server has nothing else to do): a
            # head not read yet would count as idle, and make room for the newcomer
            await asyncio.sleep(1.0)
            for _ in range(2):  # refused again: the count is of connections open now
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                status, headers, body = await answer(reader)  # without sending a byte
                writer.close()
                problem = assert_problem(status, headers, body, 503)
                assert problem["type"].endswith("/too-many-connections")
                assert headers["retry-after"] == "1" and str(cap) in problem["detail"]
        finally:
            for _, writer in held:
                writer.close()
            stop.set()
            await wait_stopped()
