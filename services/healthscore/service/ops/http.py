"""The ops endpoints, served by the service's own process (`ops.server`).

/healthz       the process and its event loop answer
/readyz        the latest background readiness result (PostgreSQL reachable,
               broker reachable, partitions assigned); 503 with a JSON body
               naming the failed check, or `checker` when the result is stale
/metrics       Prometheus text format
/docs/asyncapi AsyncAPI document (HTML; `/docs/asyncapi.json` for JSON)

Every handler is O(1) and does no I/O: readiness is read from the checker's
latest result, the metrics text is rendered at most once per
`metrics_max_age` seconds whoever asks (~0.75 ms a render), the AsyncAPI page
and document once.

The server shares the consumer's event loop, so whatever a request costs is
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
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker
from healthscore.service.ops.server import Response

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

JSON = "application/json"
HTML = "text/html; charset=utf-8"

HEALTHY = Response(200, JSON, b'{"status":"ok"}')
NOT_FOUND = Response(404, JSON, b'{"error":"not found"}')
NOT_ALLOWED = Response(405, JSON, b'{"error":"method not allowed"}')


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


class OpsApp:
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
        self._metrics = metrics
        self._readiness = readiness
        self._asyncapi_json = asyncapi_json
        self._asyncapi_html = asyncapi_html
        self._metrics_max_age = metrics_max_age
        self._clock = clock
        self._turns = _Turns(max_per_second, clock, sleep)
        self._liveness_turns = _Turns(max_per_second, clock, sleep)
        self._metrics_text = b""
        self._metrics_rendered = -float("inf")
        self._documents: dict[str, bytes] = {}
        self.metrics_renders = 0

    async def handle(self, method: str, path: str) -> Response:
        """The answer to `method path`, in its turn."""
        await (self._liveness_turns if path == "/healthz" else self._turns).wait()
        if method not in ("GET", "HEAD"):
            return NOT_ALLOWED
        if path == "/healthz":
            return HEALTHY
        if path == "/readyz":
            status, body = self._readiness.status()
            return Response(status, JSON, orjson.dumps(body))
        if path == "/metrics":
            return Response(200, CONTENT_TYPE_LATEST, self.metrics_text())
        if path == "/docs/asyncapi.json":
            return Response(200, JSON, self._document("json", self._asyncapi_json))
        if path in ("/docs/asyncapi", "/docs/asyncapi/"):
            return Response(200, HTML, self._document("html", self._asyncapi_html))
        return NOT_FOUND

    def metrics_text(self) -> bytes:
        """The exposition text, rendered again only once it is `metrics_max_age` old."""
        now = self._clock()
        if now - self._metrics_rendered >= self._metrics_max_age:
            self._metrics_text = generate_latest(self._metrics.registry)
            self._metrics_rendered = now
            self.metrics_renders += 1
        return self._metrics_text

    def _document(self, kind: str, render: Callable[[], str]) -> bytes:
        """The AsyncAPI document does not change while the service runs: render it once."""
        document = self._documents.get(kind)
        if document is None:
            document = self._documents[kind] = render().encode()
        return document
