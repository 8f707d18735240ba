"""The ops routes, called through FastStream's ASGI app: every answer O(1), no I/O per
request."""

from __future__ import annotations

from typing import Any

import orjson
from faststream.asgi import AsgiFastStream

from healthscore.service.ops.metrics import Metrics
from healthscore.service.ops.readiness import ReadinessChecker
from healthscore.service.ops.routes import MAX_RENDERED_ANSWERS, OpsRoutes
from tests.utils.fakes import Counted, FakeClock


async def call(routes: OpsRoutes, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    """One request through an ASGI app serving `routes` (as the service's app does)."""
    app = AsgiFastStream(asgi_routes=routes.routes, logger=None)
    scope = {"type": "http", "method": method, "path": path, "query_string": b"", "headers": []}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], headers.get(b"content-type", b"").decode(), body


def make_app(
    checks: dict[str, Counted] | None = None, clock: FakeClock | None = None
) -> tuple[OpsRoutes, Metrics, dict[str, int]]:
    metrics = Metrics()
    renders = {"json": 0, "html": 0}

    def json_doc() -> str:
        renders["json"] += 1
        return '{"asyncapi": "3.0.0"}'

    def html_doc() -> str:
        renders["html"] += 1
        return "<!DOCTYPE html><title>asyncapi</title>"

    checker = ReadinessChecker(checks or {"a": Counted()}, interval=1, timeout=1)
    app = OpsRoutes(metrics, checker, json_doc, html_doc, clock=clock or FakeClock(50.0))
    return app, metrics, renders


async def test_readyz_serves_the_latest_result_and_runs_no_check() -> None:
    check = Counted()
    app, _, _ = make_app({"postgres": check})
    status, _, body = await call(app, "/readyz")
    assert status == 503
    assert orjson.loads(body)["failed"] == ["checker"]  # nothing checked yet
    await app._readiness.check_once()
    for _ in range(200):
        status, content_type, body = await call(app, "/readyz")
        assert status == 200
    assert check.calls == 1
    assert content_type == "application/json"
    assert orjson.loads(body)["checks"] == {"postgres": "ok"}


async def test_readyz_names_the_failed_check() -> None:
    app, _, _ = make_app(
        {"postgres": Counted(), "kafka": Counted("the cluster reports no brokers")}
    )
    await app._readiness.check_once()
    status, _, body = await call(app, "/readyz")
    assert status == 503
    document = orjson.loads(body)
    assert document["failed"] == ["kafka"]
    assert document["checks"]["kafka"] == "the cluster reports no brokers"


async def test_metrics_are_rendered_at_most_once_per_max_age() -> None:
    clock = FakeClock(50.0)
    app, metrics, _ = make_app(clock=clock)
    metrics.batch_failures.inc()
    for _ in range(100):
        status, content_type, body = await call(app, "/metrics")
        assert status == 200
    assert app.metrics_renders == 1
    assert content_type.startswith("text/plain")
    assert b"healthscore_batch_failures_total 1.0" in body
    metrics.batch_failures.inc()
    clock.now += 0.5
    assert b"healthscore_batch_failures_total 1.0" in (await call(app, "/metrics"))[2]
    clock.now += 0.5  # 1 s after the first render: rendered again, with the new value
    assert b"healthscore_batch_failures_total 2.0" in (await call(app, "/metrics"))[2]
    assert app.metrics_renders == 2


async def test_metrics_answers_kept_are_bounded_whatever_the_query_and_accept() -> None:
    """Each rendered exposition was kept per query string and Accept header, forever:
    whoever reaches the ops port could ask /metrics?n=1, ?n=2, ... (or vary Accept) and
    every answer, the whole exposition, stayed in the consumer's memory, growing at the
    pacing's 50 a second without end. A few are kept, the least recent going first; a
    scraper's usual query is still served from what was kept."""
    clock = FakeClock(50.0)
    app, _, _ = make_app(clock=clock)
    asgi = AsgiFastStream(asgi_routes=app.routes, logger=None)

    async def scrape(query: bytes, accept: bytes = b"text/plain") -> int:
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/metrics",
            "query_string": query,
            "headers": [(b"accept", accept)],
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await asgi(scope, receive, send)
        return int(sent[0]["status"])

    assert await scrape(b"") == 200
    for n in range(300):
        assert await scrape(b"n=%d" % n) == 200
        assert await scrape(b"", b"text/plain;q=0.%d" % n) == 200
    assert app.metrics_answers_kept <= MAX_RENDERED_ANSWERS
    renders = app.metrics_renders
    for _ in range(20):  # the scraper's own, asked again within max_age: kept
        assert await scrape(b"n=299") == 200
    assert app.metrics_renders == renders


async def test_the_asyncapi_documents_are_rendered_once() -> None:
    app, _, renders = make_app()
    for _ in range(5):
        status, content_type, body = await call(app, "/docs/asyncapi")
        assert status == 200 and body.startswith(b"<!DOCTYPE html>")
        assert content_type == "text/html; charset=utf-8"
        assert (await call(app, "/docs/asyncapi.json"))[0] == 200
    assert renders == {"json": 1, "html": 1}


async def test_health_not_found_and_method() -> None:
    app, _, _ = make_app({"a": Counted("down")})
    assert await call(app, "/healthz") == (200, "application/json", b'{"status":"ok"}')
    assert (await call(app, "/nope"))[0] == 404
    assert (await call(app, "/metrics", method="POST"))[0] == 405


async def test_requests_are_answered_in_turn_at_most_max_per_second() -> None:
    """Twenty requests arriving at once: each waits for its own slot, 1/50 s apart;
    nothing is refused. Once the crowd is gone, a request waits for nothing."""
    clock = FakeClock(50.0)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))

    checker = ReadinessChecker({"a": Counted()}, interval=1, timeout=1)
    await checker.check_once()
    app = OpsRoutes(
        Metrics(), checker, lambda: "{}", lambda: "", max_per_second=50, clock=clock, sleep=sleep
    )
    answers = [await call(app, "/readyz" if i % 2 else "/metrics") for i in range(20)]
    assert [status for status, _, _ in answers] == [200] * 20
    assert waits == [round(i / 50, 6) for i in range(1, 20)]  # the first goes at once
    # liveness has a turn of its own: the crowd above does not delay it
    waits.clear()
    assert (await call(app, "/healthz"))[0] == 200
    assert waits == []
    clock.now += 10
    assert (await call(app, "/metrics"))[0] == 200
    assert waits == []


async def test_unpaced_when_max_per_second_is_zero() -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("an unpaced app never waits")

    checker = ReadinessChecker({"a": Counted()}, interval=1, timeout=1)
    app = OpsRoutes(Metrics(), checker, lambda: "{}", lambda: "", max_per_second=0, sleep=sleep)
    for _ in range(10):
        assert (await call(app, "/healthz"))[0] == 200


async def test_a_metrics_client_that_went_away_is_no_error() -> None:
    # a scraper that gave up while waiting its turn (or connected while the port was
    # not yet served): prometheus-client reads http.disconnect and sends nothing; the
    # kept answer indexed the first message and logged an IndexError traceback
    app, _, _ = make_app()
    asgi = AsgiFastStream(asgi_routes=app.routes, logger=None)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [],
    }
    sent: list[Any] = []

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    await asgi(scope, gone, send)
    assert sent == []
    assert app.metrics_renders == 0
    status, _, body = await call(app, "/metrics")  # the next scraper gets its answer
    assert status == 200 and b"healthscore_batch_failures_total" in body
