"""The ops endpoints, served by the service's own process (uvicorn, plain ASGI).

/healthz       the process and its event loop answer
/readyz        PostgreSQL reachable, broker reachable, partitions assigned;
               503 with a JSON body naming the failed check
/metrics       Prometheus text format
/docs/asyncapi AsyncAPI document (HTML; `/docs/asyncapi.json` for JSON)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from healthscore.ops.metrics import Metrics

Check = Callable[[], Awaitable[str | None]]  # None = ok, else why not
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class OpsApp:
    def __init__(
        self,
        metrics: Metrics,
        readiness: dict[str, Check],
        asyncapi_json: Callable[[], str],
        asyncapi_html: Callable[[], str],
        check_timeout: float = 2.0,
    ) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._asyncapi_json = asyncapi_json
        self._asyncapi_html = asyncapi_html
        self._timeout = check_timeout

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
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b'{"error":"method not allowed"}', "application/json")
        elif path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            status, body = await self.readiness()
            await _respond(send, status, orjson.dumps(body), "application/json")
        elif path == "/metrics":
            await _respond(send, 200, generate_latest(self._metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/docs/asyncapi.json":
            await _respond(send, 200, self._asyncapi_json().encode(), "application/json")
        elif path in ("/docs/asyncapi", "/docs/asyncapi/"):
            await _respond(send, 200, self._asyncapi_html().encode(), "text/html; charset=utf-8")
        else:
            await _respond(send, 404, b'{"error":"not found"}', "application/json")

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        checks: dict[str, str] = {}
        for name, check in self._readiness.items():
            try:
                problem = await asyncio.wait_for(check(), self._timeout)
            except TimeoutError:
                problem = f"no answer within {self._timeout:g}s"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            checks[name] = "ok" if problem is None else problem
        ready = all(v == "ok" for v in checks.values())
        failed = [k for k, v in checks.items() if v != "ok"]
        body = {"status": "ready" if ready else "not ready", "checks": checks, "failed": failed}
        return (200 if ready else 503), body


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
