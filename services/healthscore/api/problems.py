"""Errors as RFC 9457 problem details (application/problem+json)."""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from healthscore.api.auth import Unauthenticated
from healthscore.api.cursor import InvalidCursor
from healthscore.errors import HealthscoreError

MEDIA_TYPE: Final = "application/problem+json"
# what RFC 6750's error_description may hold (%x20-21 / %x23-5B / %x5D-7E), and how much
_DESCRIPTION_UNSAFE: Final = re.compile(r'[^\x20-\x7e]|["\\]')
MAX_DESCRIPTION: Final = 200
TYPE_BASE: Final = "https://healthscore.invalid/problems/"  # names, not pages

TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid request",
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


def problem_response(
    request: Request,
    status: int,
    kind: str,
    detail: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": TYPE_BASE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return Response(orjson.dumps(body), status, headers=headers, media_type=MEDIA_TYPE)


async def on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem_response(request, exc.status, exc.kind, exc.detail)


async def on_unauthenticated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Unauthenticated)
    # RFC 6750: say which scheme and why; error_description is printable ASCII without
    # '"' or a backslash (a reason may quote the token's own header, which anyone can write:
    # a character beyond latin-1 failed the response as a 500)
    reason = _DESCRIPTION_UNSAFE.sub("?", exc.reason.replace('"', "'"))[:MAX_DESCRIPTION]
    challenge = f'Bearer realm="healthscore", error="{exc.code}", error_description="{reason}"'
    return problem_response(
        request, 401, "unauthorized", exc.reason, headers={"WWW-Authenticate": challenge}
    )


async def on_invalid_cursor(request: Request, exc: Exception) -> Response:
    return problem_response(request, 400, "invalid-cursor", str(exc))


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"location": list(e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
    ]
    detail = "; ".join(f"{'.'.join(map(str, e['location']))}: {e['message']}" for e in errors)
    return problem_response(request, 422, "invalid-request", detail, errors=errors)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    return problem_response(request, exc.status_code, kind, str(exc.detail))


HANDLERS: Final = {
    ApiProblem: on_api_problem,
    Unauthenticated: on_unauthenticated,
    InvalidCursor: on_invalid_cursor,
    RequestValidationError: on_validation_error,
    StarletteHTTPException: on_http_exception,
}
