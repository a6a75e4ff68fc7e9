"""Problem responses (RFC 9457): the one table from error kind to HTTP status, and the
handlers that turn every failure into `application/problem+json`.

Handlers: our `CargoholdError`; FastAPI's request validation (422 naming the field, or
400 when the body is not JSON at all); pydantic's own `ValidationError` raised by a
service; Starlette's HTTP errors (404 no route, 405, ...); and anything else, a 500
that logs the traceback and says little.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import CargoholdError, ErrorKind
from ..models import Problem

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# The OpenAPI security scheme of the TCP bearer token.
SECURITY_SCHEME = "bearer"

STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_ARGUMENT: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.ALREADY_EXISTS: 409,
    ErrorKind.CONFLICT: 409,
    ErrorKind.PRECONDITION_FAILED: 412,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.VALIDATION: 422,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.RESOURCE_EXHAUSTED: 429,
}

_DESCRIPTIONS = {
    400: "Bad input: malformed JSON, an invalid identifier, filter or header",
    401: "No or wrong bearer token",
    403: "Refused: a WebSocket from a browser page of another origin",
    404: "No such object (or namespace)",
    409: "Conflict: it exists already, is in use, or is in the wrong state",
    412: "If-Match did not match the current ETag",
    413: "Request body too large",
    416: "Range Not Satisfiable: no range of the Range header is inside the content",
    422: "A field failed validation; `errors` names each one",
    429: "Too many streams open from this client: close one, or retry later",
    503: "The runtime is not available",
}


def problem_response(
    status: int,
    detail: str,
    kind: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:cargohold:problem:{kind}" if kind else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


_CHALLENGE = {
    "WWW-Authenticate": {"description": "`Bearer`: the scheme to authenticate with", "schema": {"type": "string"}}
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for each status; `document_problems` gives them their
    problem+json schema once the whole document is built."""
    return {status: {"description": _DESCRIPTIONS[status]} for status in statuses}


def document_problems(schema: dict[str, Any], is_public: Callable[[str], bool]) -> dict[str, Any]:
    """Make every error response of an OpenAPI document what the app really sends, and
    document the errors every route can answer whatever its router says:

    - 401 and the `bearer` security scheme on each operation whose path is not public
      (`is_public(path)` false): over TCP the token middleware answers before any route;
    - 413 on each operation that takes a body: the body limit middleware answers it;
    - every 4xx/5xx as `application/problem+json` with the Problem schema (FastAPI's own
      422 included), the only error body the app sends.
    """
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Needed over TCP listeners: the token in the daemon's --token-file (default "
        "<state>/token). Callers on the unix socket send none: the socket's file mode is the gate.",
    }
    content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("413", {"description": _DESCRIPTIONS[413]})
            if not is_public(path):
                operation["security"] = [{SECURITY_SCHEME: []}]
                responses.setdefault("401", {"description": _DESCRIPTIONS[401]})["headers"] = _CHALLENGE
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = content
                    if status == "422":
                        response["description"] = _DESCRIPTIONS[422]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return schema


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _field_errors(errors: list[Any]) -> list[dict[str, Any]]:
    return [
        {"field": _location(error["loc"]), "message": error["msg"], "type": error["type"]}
        for error in errors
    ]


def _validation_detail(fields: list[dict[str, Any]]) -> str:
    listed = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields[:5])
    more = f" (and {len(fields) - 5} more)" if len(fields) > 5 else ""
    return f"invalid request: {listed}{more}"


async def on_cargohold_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CargoholdError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.kind is ErrorKind.UNAUTHENTICATED else None
    return problem_response(STATUS[exc.kind], exc.detail, exc.kind.value, headers=headers)


async def on_request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for error in errors:
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "malformed JSON")
            return problem_response(
                400, f"request body is not valid JSON: {reason}", ErrorKind.INVALID_ARGUMENT.value
            )
    fields = _field_errors(errors)
    return problem_response(422, _validation_detail(fields), ErrorKind.VALIDATION.value, fields)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    # Raised by a service validating a derived document (a merge-patch result): the
    # fields are those of the body.
    assert isinstance(exc, ValidationError)
    fields = _field_errors([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
    return problem_response(422, _validation_detail(fields), ErrorKind.VALIDATION.value, fields)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no endpoint at {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(exc.status_code, detail, headers=exc.headers)


async def on_unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "internal error; the daemon's log has the details")


def add_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CargoholdError, on_cargohold_error)
    app.add_exception_handler(RequestValidationError, on_request_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected_error)
