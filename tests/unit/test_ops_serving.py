"""The ops port over real HTTP: bound first (a taken port names the setting), port 0
picks a free one, uvicorn serves the routes with keep-alive and HEAD."""

from __future__ import annotations

import asyncio
import http.client
import socket

import pytest
from faststream.asgi import AsgiFastStream

from healthscore.errors import StartupRefused
from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker
from healthscore.service.ops.routes import OpsRoutes
from healthscore.service.ops.serving import bind_ops_socket, serve


async def ok() -> None:
    return None


def exchange(port: int) -> list[tuple[int, bytes, str | None]]:
    """Three requests on one keep-alive connection: GET, HEAD, GET."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = []
    try:
        for method, path in (("GET", "/healthz"), ("HEAD", "/readyz"), ("GET", "/readyz")):
            connection.request(method, path)
            response = connection.getresponse()
            answers.append((response.status, response.read(), response.getheader("content-type")))
    finally:
        connection.close()
    return answers


async def test_routes_are_served_on_the_bound_socket_with_keep_alive_and_head() -> None:
    checker = ReadinessChecker({"a": ok}, interval=1, timeout=1)
    await checker.check_once()
    routes = OpsRoutes(Metrics(), checker, lambda: "{}", lambda: "<!DOCTYPE html>")
    app = AsgiFastStream(asgi_routes=routes.routes, logger=None)
    sock = bind_ops_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    assert port > 0
    async with serve(app, sock):
        answers = await asyncio.to_thread(exchange, port)
    assert answers[0] == (200, b'{"status":"ok"}', "application/json")
    assert answers[1][:2] == (200, b"")  # HEAD: no body
    assert answers[2][0] == 200 and b'"status":"ready"' in answers[2][1]
    assert sock.fileno() == -1  # closed with the server


def test_a_taken_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupRefused, match=f"cannot listen on 127.0.0.1:{port}.*OPS_PORT"):
            bind_ops_socket("127.0.0.1", port)
