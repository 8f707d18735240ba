"""Serving the API: `healthscore api`, and the dashboard at the end of `healthscore demo`."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Literal, NamedTuple

import structlog
import uvicorn
from pydantic import SecretStr

from healthscore.api import problems
from healthscore.api.app import create_app, ops_app, served
from healthscore.api.dev import DevIdentity, DevSetupFailed, dev_login_url, prepare_dev_identity
from healthscore.api.state import ApiConfig
from healthscore.asgi_server import SignalFreeServer
from healthscore.config import Settings
from healthscore.http_limits import OPS_MAX_CONNECTIONS, BoundedHttpProtocol
from healthscore.store.db import database_tls

log = structlog.get_logger(__name__)


class ProblemHttpProtocol(BoundedHttpProtocol):
    """The bounded protocol answering its refusals as the API answers every other:
    problem documents."""

    refused_event = "api_connection_refused"
    crowded_event = "api_connections_refused"

    def refusal_body(
        self, status: int, kind: str, detail: str, instance: str | None
    ) -> tuple[str, bytes]:
        return problems.MEDIA_TYPE, problems.problem_body(status, kind, detail, instance)


def _uvicorn(
    app: Any,
    host: str,
    port: int,
    max_connections: int,
    lifespan: Literal["on", "off"] = "on",
) -> SignalFreeServer:
    return SignalFreeServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan=lifespan,
            # bounded heads, read deadlines and connections (healthscore.http_limits);
            # no WebSockets
            http=ProblemHttpProtocol.capped(max_connections),
            ws="none",
            server_header=False,
            # the page polls; idle keep-alive connections are cheap
            timeout_keep_alive=30,
        )
    )


def bound_address(server: uvicorn.Server, host: str) -> str:
    """http://host:port the server listens on (the port may have been 0)."""
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else 0
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


class Listening(NamedTuple):
    """Where a served API listens: http://host:port of the API, and of its ops port."""

    api: str
    ops: str | None


async def serve_until(
    config: ApiConfig, host: str, port: int, stop: asyncio.Event, ops_port: int | None = None
) -> Listening:
    """Start serving, and the Prometheus exposition on `ops_port` (None: nowhere); return
    the addresses once listening. Stops when `stop` is set."""
    app = create_app(config)
    address = await _start(_uvicorn(served(app), host, port, config.max_connections), host, stop)
    if ops_port is None:
        return Listening(address, None)
    ops = _uvicorn(ops_app(app.state.metrics), host, ops_port, OPS_MAX_CONNECTIONS, lifespan="off")
    return Listening(address, await _start(ops, host, stop))


async def _start(server: SignalFreeServer, host: str, stop: asyncio.Event) -> str:
    task = asyncio.create_task(server.serve())

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True
        await task

    while not server.started:
        if task.done():
            task.result()  # start-up failed (a taken port, the database): raise it
            raise RuntimeError("the API server stopped during start-up")
        await asyncio.sleep(0.05)
    _STOPPERS.add(asyncio.create_task(stopper()))
    return bound_address(server, host)


_STOPPERS: set[asyncio.Task[None]] = set()


async def wait_stopped() -> None:
    """Wait until every server started here has shut down."""
    while _STOPPERS:
        task = _STOPPERS.pop()
        await task


async def dev_config(settings: Settings) -> tuple[ApiConfig, DevIdentity]:
    """--dev: the key from the database, three users, a login role in cs_dashboard."""
    if settings.api_jwt_secret is not None or settings.api_jwks_path is not None:
        # the links are printed (a terminal, its scrollback, a CI log): signed with the
        # identity provider's secret they would be twelve hours of anybody's admin access
        raise DevSetupFailed(
            "--dev signs its printed sign-in links with a key of its own: unset "
            "API_JWT_SECRET and API_JWKS_PATH (an identity provider's), or run without --dev"
        )
    admin = settings.migration_database_url or settings.database_url
    assert admin is not None
    tls = database_tls(settings)
    identity = await prepare_dev_identity(admin.get_secret_value(), tls)
    overrides: dict[str, Any] = {}
    if settings.api_database_url is None:
        url = await dev_login_url(admin.get_secret_value(), tls)
        overrides["api_database_url"] = SecretStr(url)
    config = ApiConfig.from_settings(
        settings.model_copy(update=overrides), identity.signing_key, identity.verifier
    )
    return config, identity


def print_sign_in(address: str, identity: DevIdentity | None) -> None:
    print(f"dashboard: {address}/", flush=True)
    print(f"API docs:  {address}/api/docs", flush=True)
    if identity is not None:
        print("sign in (development links, valid 12 hours; production uses the IdP's tokens):")
        for role, link in identity.links(address).items():
            print(f"  {role:<8} {link}", flush=True)


async def run_dashboard(settings: Settings) -> None:
    """The end of `healthscore demo`: serve the dashboard with dev sign-in until Ctrl-C."""
    config, identity = await dev_config(settings)
    stop = asyncio.Event()
    stop_on_signals(stop)
    # a person's look at the demo: no ops port (one more port that could be taken)
    listening = await serve_until(config, settings.api_host, settings.api_port, stop)
    print_sign_in(listening.api, identity)
    print("serving the dashboard until Ctrl-C", flush=True)
    await wait_stopped()
