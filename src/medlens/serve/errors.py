"""Every error the server answers: ``{"error": {"code": ..., "message": ...}}`` with an HTTP status, one line.

:class:`ApiError` is raised by the routes for a client's mistake (4xx) or a model that cannot answer (5xx);
:func:`install_error_handlers` turns it, FastAPI's validation errors and anything unexpected into that body, so
no traceback ever reaches a client and the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("medlens.serve")


class ApiError(Exception):
    """An error returned to the client as JSON with an HTTP status.

    Example:
        >>> raise ApiError(422, "unknown_label", "label 'x' is not one of ['a', 'b']")  # doctest: +SKIP
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


_WHAT = {400: "Bad request (e.g. an empty file)", 401: "Missing or wrong API key", 413: "Body, file, image or file count over the limit",
         415: "Not a readable image, or not multipart/form-data", 422: "A field is invalid (the message names it)",
         503: "Busy: too many pixels being decoded; retry after the Retry-After seconds"}
#: where an error body is declared: every error is JSON, whatever the route answers when it succeeds
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route may answer: ``application/json`` with :class:`ErrorBody`
    (declared with its media type, so a route whose success is HTML or PNG does not seem to answer errors in it)."""
    return {c: {"model": ErrorBody, "description": _WHAT[c], "content": _ERROR_CONTENT} for c in codes}


#: the errors of every route that takes an upload (401 is added to the ``/v1`` routes only when the server has a key)
UPLOAD_ERRORS = responses(400, 413, 415, 422, 503)
#: a 200 whose body is a PNG image (``/v1/explain``, ``/v1/preview``), declared with its media type
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "A PNG image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}
#: a 200 whose body is an HTML page (``/v1/report``), declared with its media type
HTML_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "An HTML page (a download)", "content": {"text/html": {"schema": {"type": "string"}}}}}


def one_line(text: str) -> str:
    """A message on one line (a client's log or a page shows it as one)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body with ``status``."""
    return JSONResponse({"error": {"code": code, "message": one_line(message)}}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, count_error: Callable[[], None]) -> None:
    """Answer :class:`ApiError`, request validation errors, HTTP errors and anything unexpected with the JSON body.

    ``count_error`` is called for each error (the server's error counter).
    """

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        count_error()
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        count_error()
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", []))
        return error_response(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # the exception's headers travel with it: a 405 names the methods the route takes (``Allow``, RFC 9110)
        return error_response(exc.status_code, "http_error", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        count_error()
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: the request could not be processed")
