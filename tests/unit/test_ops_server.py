"""The ops HTTP server over real sockets: keep-alive, pipelining, refusals, closing."""

from __future__ import annotations

import asyncio
import functools
import urllib.request
from collections.abc import AsyncIterator

import pytest

from healthscore.service.ops.server import MAX_HEADER_BYTES, OpsServer, Response, parse_request


async def echo(method: str, path: str) -> Response:
    if path == "/slow":
        await asyncio.sleep(0.05)
    return Response(200, "text/plain", f"{method} {path}".encode())


@pytest.fixture
async def server() -> AsyncIterator[OpsServer]:
    server = OpsServer(echo, idle_timeout=0.2)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    # a guard against a server that never answers, not a timing assertion
    return await asyncio.wait_for(_read_response(reader), 30)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server closed the connection (and sent nothing more); 30 s: a hang guard."""
    return await asyncio.wait_for(reader.read(), 30) == b""


async def open_(server: OpsServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert server.port
    return await asyncio.open_connection("127.0.0.1", server.port)


async def test_keep_alive_answers_one_request_after_another(server: OpsServer) -> None:
    reader, writer = await open_(server)
    for path in ("/a", "/b?x=1", "/c"):
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode())
        status, headers, body = await read_response(reader)
        assert status == 200
        assert body == f"GET {path.split('?')[0]}".encode()
        assert headers["content-type"] == "text/plain"
        assert headers["cache-control"] == "no-store"
        assert "connection" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(server: OpsServer) -> None:
    reader, writer = await open_(server)
    paths = ["/slow", "/1", "/slow", "/2", *(f"/{i}" for i in range(3, 30))]
    writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
    for path in paths:
        assert (await read_response(reader))[2] == f"GET {path}".encode()
    writer.close()


async def test_a_request_split_across_writes(server: OpsServer) -> None:
    reader, writer = await open_(server)
    for piece in (b"GE", b"T /split HT", b"TP/1.1\r\nHost:", b" x\r\n", b"\r\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0)
    assert (await read_response(reader))[2] == b"GET /split"
    writer.close()


async def test_connection_close_and_http_1_0_close_after_the_answer(server: OpsServer) -> None:
    for request in (
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET /x HTTP/1.0\r\n\r\n",
    ):
        reader, writer = await open_(server)
        writer.write(request)
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], body) == (200, "close", b"GET /x")
        assert await closed(reader)  # closed by the server
        writer.close()
    reader, writer = await open_(server)
    writer.write(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
    assert (await read_response(reader))[0] == 200
    assert (await read_response(reader))[0] == 200
    writer.close()


async def test_head_has_no_body(server: OpsServer) -> None:
    reader, writer = await open_(server)
    writer.write(b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
    status_line = await reader.readline()
    assert status_line == b"HTTP/1.1 200 OK\r\n"
    head = b""
    while (line := await reader.readline()) != b"\r\n":
        head += line
    assert b"content-length: 7" in head  # of the body ("HEAD /x"), not sent
    assert (await read_response(reader))[2] == b"GET /y"  # next, with nothing between
    writer.close()


REFUSALS = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /x HTTP/2.0\r\n\r\n", 400),
    (b"GET x HTTP/1.1\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
    (b"GET /x HTTP/1.1\r\nX: " + b"a" * (MAX_HEADER_BYTES + 10), 431),  # never ends
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSALS)
async def test_refusals_answer_then_close(
    server: OpsServer, request_bytes: bytes, status: int
) -> None:
    reader, writer = await open_(server)
    writer.write(request_bytes + b"GET /after HTTP/1.1\r\n\r\n")
    answered, headers, _ = await read_response(reader)
    assert (answered, headers["connection"]) == (status, "close")
    assert await closed(reader)  # nothing after a refused request is answered
    writer.close()


async def test_an_idle_connection_is_closed(server: OpsServer) -> None:
    reader, writer = await open_(server)
    writer.write(b"GET /x HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)  # idle_timeout 0.2 s
    reader, writer = await open_(server)
    writer.write(b"GET /never-finished HTTP/1.1\r\n")  # a request that never ends
    assert await closed(reader)


async def test_a_half_closed_client_still_gets_its_answers(server: OpsServer) -> None:
    reader, writer = await open_(server)
    writer.write(b"GET /slow HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    writer.write_eof()
    assert (await read_response(reader))[2] == b"GET /slow"
    _, headers, body = await read_response(reader)
    assert (body, headers["connection"]) == (b"GET /b", "close")
    assert await closed(reader)


async def test_an_ordinary_client(server: OpsServer) -> None:
    def get() -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/u?q=1", timeout=10) as r:
            return r.status, r.read()

    assert await asyncio.to_thread(get) == (200, b"GET /u")


async def test_close_ends_open_connections(server: OpsServer) -> None:
    reader, writer = await open_(server)
    writer.write(b"GET /x HTTP/1.1\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    server.close()
    assert await closed(reader)


def test_parse_request() -> None:
    request = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nConnection: Close")
    assert (request.method, request.path, request.keep_alive) == ("GET", "/metrics", False)
    assert parse_request(b"GET / HTTP/1.1\r\nContent-Length: 0").keep_alive


async def test_the_same_under_uvloop() -> None:
    """`serve` runs on uvloop (whose transports are its own classes): every
    scenario above again, on a uvloop loop in a thread of its own."""
    uvloop = pytest.importorskip("uvloop")
    scenarios = [
        test_keep_alive_answers_one_request_after_another,
        test_pipelined_requests_are_answered_in_order,
        test_a_request_split_across_writes,
        test_connection_close_and_http_1_0_close_after_the_answer,
        test_head_has_no_body,
        test_an_idle_connection_is_closed,
        test_a_half_closed_client_still_gets_its_answers,
        test_an_ordinary_client,
        test_close_ends_open_connections,
        *(
            functools.partial(test_refusals_answer_then_close, request_bytes=r, status=s)
            for r, s in REFUSALS
        ),
    ]

    async def main() -> None:
        for scenario in scenarios:
            server = OpsServer(echo, idle_timeout=0.2)
            await server.start("127.0.0.1", 0)
            try:
                await asyncio.wait_for(scenario(server), 60)  # a guard, as above
            finally:
                server.close()
                await server.wait_closed()

    def run() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())

    await asyncio.to_thread(run)


async def test_a_failing_handler_answers_500_and_the_server_goes_on() -> None:
    async def handler(method: str, path: str) -> Response:
        if path == "/bug":
            raise RuntimeError("a bug")
        return await echo(method, path)

    server = OpsServer(handler)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await open_(server)
        writer.write(b"GET /bug HTTP/1.1\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (500, "close")
        assert await closed(reader)
        writer.close()
        reader, writer = await open_(server)
        writer.write(b"GET /fine HTTP/1.1\r\n\r\n")
        assert (await read_response(reader))[2] == b"GET /fine"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
