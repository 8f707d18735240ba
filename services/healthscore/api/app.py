"""The read API and the dashboard page, one ASGI app (`healthscore api`).

/                      the dashboard page (static, shipped in the package)
/static/...            its script, styles and vendored assets
/api/v1/...            the JSON API (healthscore.api.routes)
/api/openapi.json      the OpenAPI document; /api/docs browses it
/api/healthz, /readyz  liveness, readiness (PostgreSQL answers)

The Prometheus exposition (requests, the response cache's counters) is not among them:
`ops_app` serves it at /metrics on a port of its own (API_OPS_PORT), which only the
monitoring reaches, never whoever reaches the API.

GET answers of /api/v1 are kept per verified user, request and read-model version
(healthscore.api.cache), invalidated by the database's change announcements
(healthscore.api.invalidation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Final

import asyncpg
import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthscore.api import problems, routes
from healthscore.api.access_log import AccessLog, RouteLabels
from healthscore.api.cache import CachedReads, CacheState, ResponseCache
from healthscore.api.invalidation import ReadModelListener
from healthscore.api.metrics import ApiMetrics
from healthscore.api.session import audience_of, create_api_pool
from healthscore.api.state import ApiConfig, ApiState
from healthscore.store import read_api
from healthscore.store.migrate import named_run, not_applied
from healthscore.unanswered import BoundedCheck

log = structlog.get_logger(__name__)

STATIC: Final = resources.files("healthscore.api") / "static"
READY_TIMEOUT: Final = 2.0
# start-up waits this long for the invalidation listener (the cache serves once it is
# live; the API serves uncached until then)
LISTENER_START_TIMEOUT: Final = 5.0

# the page loads nothing but its own files; no framing, no referrer leaks
SECURITY_HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # served over TLS at the ingress: browsers keep to HTTPS for a year (a browser
    # ignores it on plain HTTP, as in development)
    (b"strict-transport-security", b"max-age=31536000"),
    # the page uses no device: none for anything it might load
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
]


# the largest request body the API takes: a reward's outcome is a few dozen bytes
MAX_BODY_BYTES: Final = 16 * 1024


class BoundedBodies:
    """Refuses a request body over MAX_BODY_BYTES with a 413 problem before anything reads
    it, declared (Content-Length) or streamed: a route reads and parses its whole body
    before it checks the caller, so anybody could make the process hold any amount."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            await self._refuse(scope, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY_BYTES:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send) -> None:
        body = problems.problem_body(
            413,
            "content-too-large",
            f"a request body of the API is {MAX_BODY_BYTES} bytes at most",
            scope["path"],
        )
        headers = [(b"content-type", problems.MEDIA_TYPE.encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` that first gives `messages` (the body read already), then the client's."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class HeadAsGet:
    """Answers HEAD as GET without the body (RFC 9110: a general-purpose server supports
    both): the routes declare GET alone, so a HEAD, a load balancer's or an uptime
    monitor's check of /api/healthz included, was a 405. The status and headers are the
    GET's (its Content-Length and ETag); the outer layers still see HEAD."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


# an answer of the API the response cache did not mark (it marks what it keeps: private,
# revalidated by its ETag) is stored by no cache, the browser's disk included: it names
# people (a write's author, /me) or what one person may see
NO_STORE: Final = (b"cache-control", b"no-store")


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, and NO_STORE to an API answer without a
    Cache-Control (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *SECURITY_HEADERS]
                if api and not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(NO_STORE)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(name: str, refresh_seconds: float) -> str:
    html = (STATIC / name).read_text(encoding="utf-8")
    return html.replace("{{REFRESH_SECONDS}}", f"{refresh_seconds:g}")


def create_app(config: ApiConfig) -> FastAPI:
    metrics = ApiMetrics()
    cache: CacheState | None = None
    if config.cache_entries > 0:
        store = ResponseCache(
            config.cache_entries, config.cache_bytes, on_evict=metrics.cache_evictions.inc
        )
        cache = CacheState(store, metrics, list_staleness=config.list_staleness)
        metrics.cache_entries.set_function(lambda: len(store))
        metrics.cache_bytes.set_function(lambda: store.bytes)

    # run when the lifespan ends, before the pool closes
    closing: list[Callable[[], None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_api_pool(
            config.database_url,
            config.database_role,
            config.pool_size,
            config.tls,
            config.statement_timeout_ms,
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(pool.close)
            for close in closing:
                stack.callback(close)
            listener = None
            if cache is not None:
                cache.audience_of = functools.partial(audience_of, pool, config.signing_key)
                listener = ReadModelListener(
                    config.database_url,
                    config.database_role,
                    config.tls,
                    config.signing_key,
                    cache,
                )
                task = asyncio.create_task(listener.run(), name="api-cache-listener")
                stack.push_async_callback(_cancelled, task)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LISTENER_START_TIMEOUT):
                        await listener.live.wait()
            app.state.api = ApiState(
                pool,
                config.signing_key,
                config.verifier,
                config.refresh_seconds,
                cache,
                listener,
            )
            yield

    app = FastAPI(
        title="healthscore read API",
        version="1",
        summary="Customer health scores, milestones and support interactions for the "
        "customer-success dashboard. Row-level security in PostgreSQL decides what each "
        "caller sees.",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    # declares the bearer scheme in the OpenAPI document; verification is in routes
    bearer = HTTPBearer(auto_error=False, description="A JWT whose `sub` is a user_profiles id.")
    app.include_router(routes.router, dependencies=[Depends(bearer)])
    # served in front of the framework (`served`): a hit never enters FastAPI
    app.state.front = CachedReads(app, cache, config.verifier) if cache is not None else None
    app.state.access_log = config.access_log
    app.state.verifier = config.verifier
    app.state.metrics = metrics
    for exc_type, handler in problems.HANDLERS.items():
        app.add_exception_handler(exc_type, handler)

    index = _page("index.html", config.refresh_seconds)
    docs = _page("docs.html", config.refresh_seconds)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/api/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return HTMLResponse(docs)

    @app.get("/api/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    schema_ready = False

    async def database_ready(state: ApiState) -> tuple[str, str | None]:
        """The check that failed and why (None: ready). Every migration this release
        needs was applied: checked until it is (a schema only moves forward)."""
        nonlocal schema_ready
        check = "postgres"
        try:
            async with state.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                if schema_ready:
                    return check, None
                check = "schema"
                problem = await _missing_migrations(conn)
                schema_ready = problem is None
                return check, problem
        except Exception as exc:
            # the error's text names hosts, addresses, the login, the database: it goes to
            # the log, and whoever reaches the API port reads only that it failed
            log.warning("api_not_ready", check=check, error=f"{type(exc).__name__}: {exc}")
            return check, "unavailable (the api_not_ready log line says why)"

    # a query without an answer is left running, not cancelled, and shared by the
    # probes that come meanwhile (see healthscore.unanswered)
    ready_check = BoundedCheck[tuple[str, str | None]](READY_TIMEOUT)
    closing.append(ready_check.close)

    @app.get("/api/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        state: ApiState | None = getattr(request.app.state, "api", None)
        check: str = "postgres"
        problem: str | None = "not started"
        if state is not None:
            run = await ready_check.answer(functools.partial(database_ready, state))
            if isinstance(run, str):
                problem = run
            elif run.cancelled():
                problem = "cancelled (the API is stopping)"
            else:
                check, problem = run.result()
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"failed": [{"check": check, "problem": problem}]}, 503)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


async def _missing_migrations(conn: Any) -> str | None:
    """What the database lacks of the migrations this release needs (None: nothing): a
    pod of a new release on a database its migrate job has not brought up to date
    (not run yet, or run with the old image) stays unready, so the rollout waits and
    the old pods keep serving."""
    try:
        applied = {row[0] for row in await conn.fetch(read_api.APPLIED_MIGRATIONS)}
    except asyncpg.UndefinedFunctionError:
        # the function that tells this role which are applied is itself a migration
        return "the database lacks this release's migrations (0115 at least): run the migrate job"
    missing = not_applied(applied)
    if not missing:
        return None
    log.warning("api_schema_missing", missing=len(missing), first=missing[0], last=missing[-1])
    return (
        f"the database lacks {len(missing)} migration(s) this release needs ({named_run(missing)})"
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def served(app: FastAPI) -> ASGIApp:
    """What the server runs: the response cache (when the app has one) in front of the
    FastAPI app, so that a kept answer is sent without entering the framework's
    middleware and routing, behind the bound on request bodies (`BoundedBodies`), all
    inside the security-header layer and HEAD answered as GET (`HeadAsGet`), and the
    access log
    and request metrics around everything (`healthscore.api.access_log`; the log lines
    unless API_ACCESS_LOG=false)."""
    front: CachedReads | None = getattr(app.state, "front", None)
    served = HeadAsGet(SecurityHeaders(BoundedBodies(front if front is not None else app)))
    # outermost: a kept answer is logged and counted like a computed one
    return AccessLog(
        served,
        app.state.verifier,
        app.state.metrics,
        RouteLabels(
            path
            for route in [*app.routes, *routes.router.routes]
            if isinstance(path := getattr(route, "path", None), str)
        ),
        log_requests=app.state.access_log,
    )


def ops_app(metrics: ApiMetrics) -> ASGIApp:
    """The API process's ops port: /metrics, its Prometheus exposition; 404 elsewhere."""

    async def exposition(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: nothing to start
            return
        if scope["path"] == "/metrics" and scope["method"] in ("GET", "HEAD"):
            status, body = 200, generate_latest(metrics.registry)
            content_type = CONTENT_TYPE_LATEST.encode()
        else:
            status, body, content_type = 404, b"not found\n", b"text/plain; charset=utf-8"
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return exposition
