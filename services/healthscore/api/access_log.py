"""Who read what: one `api_request` log line per request to the read API.

Row-level security decides what a person sees; this says afterwards who asked for
what and got which answer, for an audit: the user the bearer token proved (never
a user id the client claims), the method, the path (the organization a page
names is in it; the query string is not logged: a search's text is the
searcher's), the status and the time taken. A request whose token was refused is
logged too, with the reason and no user. Health probes and scrapes are not logged.
The line is written when the response has been sent, kept answers included (this
layer is in front of the response cache).
"""

from __future__ import annotations

import time
from typing import Final

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from healthscore.api.auth import TokenVerifier, Unauthenticated, one_authorization

log = structlog.get_logger("healthscore.api.access")

UNLOGGED: Final = frozenset({"/api/healthz", "/api/readyz", "/api/metrics"})


class AccessLog:
    def __init__(self, app: ASGIApp, verifier: TokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

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
            self._log(scope, status, time.perf_counter() - started)

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
        log.info(
            "api_request",
            method=scope["method"],
            path=scope["path"],
            status=status,
            duration_ms=round(seconds * 1000, 1),
            user_id=user_id,
            **({"token_refused": refused} if refused else {}),
        )
