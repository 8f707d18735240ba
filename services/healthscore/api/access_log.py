"""Who read what: one `api_request` log line per request to the read API, and the
requests counted by route and status (`healthscore_api_requests_total`,
`healthscore_api_request_duration_seconds`).

Row-level security decides what a person sees; this says afterwards who asked for
what and got which answer, for an audit: the user the bearer token proved (never
a user id the client claims), the method, the path (the organization a page
names is in it), the organization a query names (`organization_id=`: an
organization's timeline), the names of the other query parameters (their values
are not logged: a search's text is the searcher's), the status and the time taken.
A request whose token was refused is logged too, with the reason and no user. Health
probes and scrapes are not logged.
The line is written when the response has been sent, kept answers included (this
layer is in front of the response cache).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl

import structlog
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthscore.api.auth import TokenVerifier, Unauthenticated, one_authorization
from healthscore.api.metrics import ApiMetrics
from healthscore.http_limits import shown_path

log = structlog.get_logger("healthscore.api.access")

UNLOGGED: Final = frozenset({"/api/healthz", "/api/readyz"})


class RouteLabels:
    """The metrics' route label of a path: the template of the route that serves it
    (`/api/v1/organizations/{organization_id}`), or `other` when none does (a label
    per scanned path would grow without bound; static files are `other` too)."""

    def __init__(self, templates: Iterable[str]) -> None:
        self._routes = [(compile_path(t)[0], t) for t in sorted(set(templates)) if t]

    def __call__(self, path: str) -> str:
        for pattern, template in self._routes:
            if pattern.match(path):
                return template
        return "other"


class AccessLog:
    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        metrics: ApiMetrics | None = None,
        routes: RouteLabels | None = None,
        log_requests: bool = True,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.metrics = metrics
        self.routes = routes or RouteLabels(())
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLOGGED:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raised before responding

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                route = self.routes(scope["path"])
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.request_duration.labels(route).observe(seconds)
            if self.log_requests:
                self._log(scope, status, seconds)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        authorizations = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        user_id: str | None = None
        refused: str | None = None
        if authorizations:
            try:
                # the tokens this process verified are remembered: no second verification
                user_id = str(self.verifier.verify(one_authorization(authorizations)).user_id)
            except Unauthenticated as exc:
                refused = exc.reason
        # refused past the signature (the route's own refusal, e.g. an unknown subject)
        later = (scope.get("state") or {}).get("token_refused")
        if later is not None:
            user_id, refused = None, later
        organization, names = _query_for_audit(scope.get("query_string", b""))
        log.info(
            "api_request",
            method=scope["method"],
            path=shown_path(scope["path"]),
            organization_id=organization,
            params=names,
            status=status,
            duration_ms=round(seconds * 1000, 1),
            user_id=user_id,
            **({"token_refused": refused} if refused else {}),
        )


_AUDIT_PARAMS: Final = 12
"""Query parameter names a line lists at most (a scanner may send hundreds)."""


def _query_for_audit(query: bytes) -> tuple[str | None, list[str] | None]:
    """The organization a query string names (a UUID, as given), and the names of its
    parameters (none of their values: a search's text is the searcher's)."""
    if not query:
        return None, None
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    organization = next((v for k, v in pairs if k == "organization_id"), None)
    if organization is not None:
        try:
            organization = str(uuid.UUID(organization))
        except ValueError:
            organization = None  # the API refused it: nothing was read
    # a name a client made up (control characters, any length) is no parameter of ours
    names = sorted({k if _PARAM_NAME.fullmatch(k) else "(other)" for k, _ in pairs})
    return organization, names[:_AUDIT_PARAMS]


_PARAM_NAME: Final = re.compile(r"[a-z_]{1,40}")
