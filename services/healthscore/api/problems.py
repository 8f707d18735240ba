"""Errors as RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

import re
import uuid
from typing import Any, Final

import asyncpg
import orjson
import structlog
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthscore.api.auth import Unauthenticated
from healthscore.api.cursor import InvalidCursor
from healthscore.api.session import DatabaseUnavailable
from healthscore.errors import HealthscoreError
from healthscore.http_limits import shown_path

log = structlog.get_logger(__name__)

MEDIA_TYPE: Final = "application/problem+json"
RETRY_AFTER_SECONDS: Final = 1
# what RFC 6750's error_description may hold (%x20-21 / %x23-5B / %x5D-7E), and how much
_DESCRIPTION_UNSAFE: Final = re.compile(r'[^\x20-\x7e]|["\\]')
MAX_DESCRIPTION: Final = 200
TYPE_BASE: Final = "https://healthscore.invalid/problems/"  # names, not pages

TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    409: "Conflict",
    413: "Content too large",
    422: "Invalid request",
    431: "Request header fields too large",
    500: "Internal error",
    503: "Unavailable",
}


class ApiProblem(HealthscoreError):
    """An answer other than success, raised by an endpoint."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


def not_found(what: str) -> ApiProblem:
    # hidden by row-level security or absent: the same answer
    return ApiProblem(404, "not-found", f"no {what} with that id is visible to you")


def problem_body(
    status: int, kind: str, detail: str | None, instance: str | None, **extra: Any
) -> bytes:
    """The problem document's bytes (also for answers sent below the framework);
    `instance` None: the request's path is not known (a head refused unread)."""
    document: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": None if instance is None else shown_path(instance),
        **extra,
    }
    if instance is None:
        del document["instance"]
    return orjson.dumps(document)


def problem_response(
    request: Request,
    status: int,
    kind: str,
    detail: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, kind, detail, request.url.path, **extra)
    return Response(body, status, headers=headers, media_type=MEDIA_TYPE)


async def on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem_response(request, exc.status, exc.kind, exc.detail)


async def on_unauthenticated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthenticated)
    # RFC 6750: say which scheme and why; error_description is printable ASCII without
    # '"' or a backslash (a reason may quote the token's own header, which anyone can write:
    # a character beyond latin-1 failed the response as a 500)
    reason = _DESCRIPTION_UNSAFE.sub("?", exc.reason.replace('"', "'"))[:MAX_DESCRIPTION]
    # for the access log: a token whose signature it verifies may still be refused here
    # (by the database: an unknown subject), and is then no user's request
    request.state.token_refused = exc.reason
    challenge = f'Bearer realm="healthscore", error="{exc.code}", error_description="{reason}"'
    return problem_response(
        request, 401, "unauthorized", exc.reason, headers={"WWW-Authenticate": challenge}
    )


async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
    return problem_response(request, 400, "invalid-cursor", str(exc))


# a 422 names this many of a request's invalid values: a query string of 64 KiB with
# 2,900 repeats of an invalid value was answered with all of them, 592 kB
MAX_LISTED_ERRORS: Final = 10


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    errors = [
        {"location": list(e.get("loc", ())), "message": e.get("msg", "")}
        for e in found[:MAX_LISTED_ERRORS]
    ]
    detail = "; ".join(f"{'.'.join(map(str, e['location']))}: {e['message']}" for e in errors)
    unlisted = len(found) - len(errors)
    if unlisted:
        detail += f"; and {unlisted} more"
    return problem_response(
        request, 422, "invalid-request", detail, errors=errors, errors_unlisted=unlisted
    )


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    # the framework's headers go with it (a 405's Allow, RFC 9110)
    return problem_response(
        request, exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {})
    )


# the database unreachable, refusing connections or gone mid-request: the client may
# try again (a 503), unlike a failure of the service's own (a 500)
UNAVAILABLE: Final[tuple[type[Exception], ...]] = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


async def on_unavailable(request: Request, exc: Exception) -> Response:
    log.warning(
        "api_database_unavailable", path=request.url.path, error=type(exc).__name__,
        detail=str(exc)[:200],
    )  # fmt: skip
    return problem_response(
        request,
        503,
        "unavailable",
        "the database cannot be reached just now; try again shortly",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def on_too_slow(request: Request, exc: Exception) -> Response:
    """A statement ran past the sessions' statement_timeout (API_STATEMENT_TIMEOUT_MS):
    the request is too costly as asked, not the database away."""
    log.warning("api_statement_timeout", path=request.url.path, method=request.method)
    return problem_response(
        request,
        503,
        "too-slow",
        "the request took longer in the database than the API allows "
        "(API_STATEMENT_TIMEOUT_MS); narrow it: a longer search text, a filter",
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """Anything else: a 500 problem naming an id the log line carries (with the
    traceback), so a report of it can be found; never the error's own text."""
    error_id = uuid.uuid4().hex
    log.error(
        "api_request_failed", path=request.url.path, method=request.method,
        error=type(exc).__name__, error_id=error_id, exc_info=exc,
    )  # fmt: skip
    return problem_response(
        request,
        500,
        "internal-error",
        f"the request failed inside the service; it is logged as {error_id}",
        error_id=error_id,
    )


HANDLERS: Final = {
    ApiProblem: on_api_problem,
    Unauthenticated: on_unauthenticated,
    InvalidCursor: on_invalid_cursor,
    RequestValidationError: on_validation_error,
    StarletteHTTPException: on_http_exception,
    **dict.fromkeys(UNAVAILABLE, on_unavailable),
    asyncpg.QueryCanceledError: on_too_slow,
    Exception: on_unexpected,
}
