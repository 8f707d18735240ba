"""The ops port: bound first, served by uvicorn on the service's own event loop.

`bind_ops_socket` runs before anything else opens, so a taken OPS_PORT stops
start-up with one line naming the setting, before any pool or producer exists;
port 0 binds any free port, and the socket says which. `serve` hands that
socket to uvicorn (httptools' parser with the bounds of `healthscore.http_limits`,
no lifespan: FastStream's app runs its own around the broker) until the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from faststream.asgi.types import ASGIApp

from healthscore.asgi_server import SignalFreeServer
from healthscore.errors import StartupRefused
from healthscore.http_limits import OPS_MAX_CONNECTIONS, BoundedHttpProtocol

# an idle keep-alive connection is closed after this long
IDLE_TIMEOUT_SECONDS = 60
# on stop, requests still in flight get this long to finish
GRACEFUL_SECONDS = 2


def bind_ops_socket(host: str, port: int) -> socket.socket:
    """The ops endpoints' listening socket (port 0: any free port)."""
    return listening_socket(host, port, "the ops endpoints", "OPS_HOST", "OPS_PORT")


def listening_socket(
    host: str, port: int, what: str, host_setting: str, port_setting: str, alternative: str = ""
) -> socket.socket:
    """A socket listening on `host`:`port` (port 0: any free port), or `StartupRefused`
    saying in one line which setting to change (`alternative`: another way out)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupRefused(
            f"{what} cannot listen on {host_setting}={host!r} ({exc}): set {host_setting} "
            "to an address of this machine"
        ) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupRefused(
            f"{what} cannot listen on {host}:{port} ({exc.strerror or exc}): set "
            f"{port_setting} to a free port (0 = any free port) or {host_setting} to another "
            f"address{alternative}"
        ) from exc
    return sock


class _OpsServer(SignalFreeServer):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, sock: socket.socket) -> AsyncIterator[None]:
    """Serve `app` on the bound `sock` until the block ends (uvicorn closes the socket)."""
    config = uvicorn.Config(
        app,
        # bounded heads, read deadlines and connections (healthscore.http_limits): only
        # Prometheus and the kubelet should reach this port, but nothing else bounds it
        http=BoundedHttpProtocol.capped(OPS_MAX_CONNECTIONS),
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=IDLE_TIMEOUT_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
    )
    server = _OpsServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]), name="ops-http")
    listening = asyncio.ensure_future(server.listening.wait())
    try:
        await asyncio.wait([serving, listening], return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # it could not start: say why
        yield
    finally:
        listening.cancel()
        server.should_exit = True
        await serving
