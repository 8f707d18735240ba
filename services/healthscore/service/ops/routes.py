"""The ops endpoints, as ASGI routes of the service's FastStream app (`AsgiFastStream`).

/healthz       the process and its event loop answer
/readyz        the latest background readiness result (PostgreSQL reachable,
               broker reachable, partitions assigned); 503 with a JSON body
               naming the failed check, or `checker` when the result is stale
/metrics       Prometheus exposition (prometheus-client's ASGI app)
/docs/asyncapi AsyncAPI document (HTML; `/docs/asyncapi.json` for JSON)

No answer does I/O: readiness is read from the checker's latest result, the
metrics exposition is rendered at most once per `metrics_max_age` seconds
whoever asks (~0.75 ms a render), the AsyncAPI page and document once.

The routes share the consumer's event loop, so whatever a request costs is
taken from the consumer, and clients asking back to back would take as much
of the loop as they can get however cheap each answer is. So requests are
answered at most `max_per_second` a second, in turn: beyond that they wait
(never refused) and a client asking back to back slows to its share.
/healthz has a turn of its own: a crowd on /metrics or /readyz does not make
liveness probes time out. Probes and scrapers ask a few times a minute; the
bound only ever meets a crowd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
from faststream.asgi import AsgiResponse
from faststream.asgi.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import make_asgi_app

from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

JSON = "application/json"
HTML = "text/html; charset=utf-8"
NO_STORE = {"cache-control": "no-store"}
# rendered /metrics answers kept at once (per query and Accept: a scraper asks with one)
MAX_RENDERED_ANSWERS = 8

HEALTHY = AsgiResponse(b'{"status":"ok"}', 200, {"content-type": JSON, **NO_STORE})
NOT_ALLOWED = AsgiResponse(
    b'{"error":"method not allowed"}',
    405,
    {"content-type": JSON, "allow": "GET, HEAD", **NO_STORE},
)


def not_found_response(paths: list[str]) -> AsgiResponse:
    """The answer to a path the ops port does not serve: which ones it does (FastStream's
    own says the application does not speak HTTP, which misleads whoever mistyped one)."""
    body = {"error": "not found", "endpoints": sorted(set(paths))}
    return AsgiResponse(orjson.dumps(body), 404, {"content-type": JSON, **NO_STORE})


class _Turns:
    """Answer slots 1/rate apart: each request takes the next free one and waits
    for it. O(1), no queue object; 0 = no pacing."""

    def __init__(self, per_second: float, clock: Clock, sleep: Sleep) -> None:
        self._spacing = 1.0 / per_second if per_second > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = -float("inf")

    async def wait(self) -> None:
        if not self._spacing:
            return
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._spacing
        if slot > now:
            await self._sleep(slot - now)


def _get_in_turn(app: ASGIApp, turns: _Turns) -> ASGIApp:
    """`app` for GET and HEAD, each request in its turn; other methods: 405."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await turns.wait()
        if scope["method"] not in ("GET", "HEAD"):
            await NOT_ALLOWED(scope, receive, send)
            return
        await app(scope, receive, send)

    return route


class _Rendered:
    """An ASGI app's answers kept for `max_age` seconds, per query and Accept header:
    the exposition is rendered once a second however many scrapers ask. At most
    MAX_RENDERED_ANSWERS of them, the least recently rendered leaving first: anybody
    can write any query or Accept, each a whole exposition kept."""

    def __init__(self, app: ASGIApp, max_age: float, clock: Clock) -> None:
        self._app = app
        self._max_age = max_age
        self._clock = clock
        self._answers: dict[tuple[bytes, bytes], tuple[float, list[Message]]] = {}
        self.renders = 0

    @property
    def kept(self) -> dict[tuple[bytes, bytes], tuple[float, list[Message]]]:
        return self._answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = b",".join(v for k, v in scope.get("headers", ()) if k.lower() == b"accept")
        key = (scope.get("query_string", b""), accept)
        now = self._clock()
        kept = self._answers.get(key)
        if kept is None or now - kept[0] >= self._max_age:
            messages: list[Message] = []

            async def keep(message: Message) -> None:
                messages.append(message)

            await self._app(scope, receive, keep)
            if not messages:
                # the client went away before its turn (prometheus-client answers an
                # http.disconnect with nothing): nothing to send, nothing to keep
                return
            self.renders += 1
            start = messages[0]
            # ASGI header names are lower case (prometheus-client sends Content-Type)
            start["headers"] = [
                *((name.lower(), value) for name, value in start.get("headers", [])),
                (b"cache-control", b"no-store"),
            ]
            self._answers.pop(key, None)
            while len(self._answers) >= MAX_RENDERED_ANSWERS:
                del self._answers[next(iter(self._answers))]
            kept = self._answers[key] = (now, messages)
        for message in kept[1]:
            await send(message)


class _Document:
    """A document rendered at its first request and kept: it does not change while
    the service runs."""

    def __init__(self, render: Callable[[], str], content_type: str) -> None:
        self._render = render
        self._content_type = content_type
        self._response: AsgiResponse | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._response is None:
            self._response = AsgiResponse(
                self._render().encode(), 200, {"content-type": self._content_type, **NO_STORE}
            )
        await self._response(scope, receive, send)


class OpsRoutes:
    def __init__(
        self,
        metrics: Metrics,
        readiness: ReadinessChecker,
        asyncapi_json: Callable[[], str],
        asyncapi_html: Callable[[], str],
        metrics_max_age: float = 1.0,
        max_per_second: float = 0.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._readiness = readiness
        turns = _Turns(max_per_second, clock, sleep)
        self._metrics = _Rendered(
            make_asgi_app(metrics.registry, disable_compression=True), metrics_max_age, clock
        )
        page = _Document(asyncapi_html, HTML)
        self.routes: list[tuple[str, ASGIApp]] = [
            ("/healthz", _get_in_turn(HEALTHY, _Turns(max_per_second, clock, sleep))),
            ("/readyz", _get_in_turn(self._ready, turns)),
            ("/metrics", _get_in_turn(self._metrics, turns)),
            ("/docs/asyncapi.json", _get_in_turn(_Document(asyncapi_json, JSON), turns)),
            ("/docs/asyncapi", _get_in_turn(page, turns)),
            ("/docs/asyncapi/", _get_in_turn(page, turns)),
        ]

    @property
    def metrics_renders(self) -> int:
        return self._metrics.renders

    @property
    def metrics_answers_kept(self) -> int:
        return len(self._metrics.kept)

    async def _ready(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, body = self._readiness.status()
        response = AsgiResponse(orjson.dumps(body), status, {"content-type": JSON, **NO_STORE})
        await response(scope, receive, send)
