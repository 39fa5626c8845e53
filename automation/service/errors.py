"""One JSON error shape for every error: ``{"error": code, "message": text}`` (+ ``details``).

Domain errors map to 4xx with their stable code; request validation to 422 with the fields;
anything unexpected to 500 ``internal_error`` with no internal detail (it is logged).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from automation.errors import (
    ConfigError,
    EmptyStoreError,
    InputError,
    NotFoundError,
    ShoalError,
    ValidationError,
)

log = logging.getLogger("shoal.service")

STATUS = {
    NotFoundError: 404,
    EmptyStoreError: 409,
    ValidationError: 422,
    InputError: 400,
    ConfigError: 500,
}


def error_body(code: str, message: str, details: object | None = None) -> dict[str, object]:
    body: dict[str, object] = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return body


def status_of(err: ShoalError) -> int:
    for cls, status in STATUS.items():
        if isinstance(err, cls):
            return status
    return 400


def install(app: FastAPI) -> None:
    @app.exception_handler(ShoalError)
    async def shoal_error(_: Request, err: ShoalError) -> JSONResponse:
        return JSONResponse(error_body(err.code, str(err)), status_code=status_of(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in err.errors()
        ]
        return JSONResponse(
            error_body("invalid_request", "the request does not match the schema", details),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            503: "not_ready",
        }
        return JSONResponse(
            error_body(code.get(err.status_code, f"http_{err.status_code}"), str(err.detail)),
            status_code=err.status_code,
            headers=getattr(err, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)
