"""The ops endpoints, served by the service's own process (uvicorn, plain ASGI).

/healthz       the process and its event loop answer
/readyz        the latest background readiness result (PostgreSQL reachable,
               broker reachable, partitions assigned); 503 with a JSON body
               naming the failed check, or `checker` when the result is stale
/metrics       Prometheus text format
/docs/asyncapi AsyncAPI document (HTML; `/docs/asyncapi.json` for JSON)

Every handler is O(1) and does no I/O: readiness is read from the checker's
latest result, the metrics text is rendered at most once per
`metrics_max_age` seconds whoever asks, the AsyncAPI page and document once.

The server shares the consumer's event loop, so whatever a request costs is
taken from the consumer, and the HTTP exchange itself (uvicorn) costs ~130 us
of CPU however cheap the handler: clients asking back to back would take as
much of the loop as they can get. So requests are answered at most
`max_per_second` a second, in turn: beyond that they wait (never refused),
and a closed-loop client slows down to its share. Probes and scrapers ask a
few times a minute; the bound only ever meets a crowd.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthscore.ops.metrics import Metrics
from healthscore.ops.readiness import ReadinessChecker

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Clock = Callable[[], float]

JSON = "application/json"
HTML = "text/html; charset=utf-8"


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._asyncapi_json = asyncapi_json
        self._asyncapi_html = asyncapi_html
        self._metrics_max_age = metrics_max_age
        self._clock = clock
        self._sleep = sleep
        # requests are answered in turn, 1 / max_per_second apart (0: unpaced)
        self._spacing = 1.0 / max_per_second if max_per_second > 0 else 0.0
        self._next_slot = -float("inf")
        self._metrics_text = b""
        self._metrics_rendered = -float("inf")
        self._documents: dict[str, bytes] = {}
        self.metrics_renders = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if self._spacing:
            await self._wait_turn()
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b'{"error":"method not allowed"}', JSON)
        elif path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', JSON)
        elif path == "/readyz":
            status, body = self._readiness.status()
            await _respond(send, status, orjson.dumps(body), JSON)
        elif path == "/metrics":
            await _respond(send, 200, self.metrics_text(), CONTENT_TYPE_LATEST)
        elif path == "/docs/asyncapi.json":
            await _respond(send, 200, self._document("json", self._asyncapi_json), JSON)
        elif path in ("/docs/asyncapi", "/docs/asyncapi/"):
            await _respond(send, 200, self._document("html", self._asyncapi_html), HTML)
        else:
            await _respond(send, 404, b'{"error":"not found"}', JSON)

    async def _wait_turn(self) -> None:
        """Take the next free answer slot and wait for it: O(1), no queue object."""
        now = self._clock()
        slot = max(now, self._next_slot)
        self._next_slot = slot + self._spacing
        if slot > now:
            await self._sleep(slot - now)

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


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
