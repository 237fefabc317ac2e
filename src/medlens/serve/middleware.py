"""Plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task group and streams per request).

* :class:`BodyLimitMiddleware` counts request body bytes as they stream in and answers 413 past the limit,
  whatever the headers claim (a chunked upload has no Content-Length).
* :class:`GuardMiddleware` answers at once with a check's refusal: :func:`request_check` refuses a missing or
  wrong API key (401), a declared body over the limit (413) and an upload POST that is not multipart (415).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from medlens.serve.errors import error_response

#: Room for the multipart envelope (boundaries, part headers, form fields) above ``max_upload_bytes``.
ENVELOPE_BYTES = 64 * 1024


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when the request body passes the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit} bytes")


class BodyLimitMiddleware:
    """ASGI middleware: counts request body bytes as they arrive and answers 413 once they pass ``limit``.

    It does not trust Content-Length (a chunked upload has none): the chunk that crosses the limit is never
    handed to the application, so the multipart parser holds (in memory or in its spool file) at most
    ``limit`` bytes. Whatever the application answered to the cut-off body is replaced by the 413.

    Example:
        >>> app.add_middleware(BodyLimitMiddleware, limit=32 << 20)  # doctest: +SKIP
    """

    def __init__(self, app: Any, limit: int, on_refuse: Callable[[], None] | None = None) -> None:
        self.app, self.limit, self.on_refuse = app, limit, on_refuse

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0
        over = False
        started = False

        async def counted() -> dict:
            nonlocal seen, over
            if over:
                raise BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise BodyTooLarge(self.limit)
            return message

        async def guarded(message: dict) -> None:
            nonlocal started
            if over and not started:
                return  # replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not started:
            if self.on_refuse is not None:
                self.on_refuse()
            await error_response(413, "too_large", f"request body is over the limit of {self.limit} bytes")(scope, receive, send)


class GuardMiddleware:
    """ASGI middleware: answers at once with ``check(scope)``'s refusal (a response), or passes the request on."""

    def __init__(self, app: Any, check: Callable[[dict], Response | None]) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refusal = self.check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def key_matches(headers: Headers, api_key: str) -> bool:
    """Whether the request carries ``api_key`` (``X-API-Key`` or ``Authorization: Bearer``), compared in constant time."""
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    return hmac.compare_digest(given.encode(), api_key.encode())


def request_check(api_key: str | None, body_limit: int, upload_limit: int, count: Callable[[bool], None],
                  upload_paths: Collection[str] | None = None) -> Callable[[dict], Response | None]:
    """The checks run before any route: API key on ``/v1``, declared body size, multipart on upload POSTs.

    Args:
        api_key: the key ``/v1`` routes need (None: open).
        body_limit: largest body, envelope included, in bytes.
        upload_limit: the limit as users set it (``max_upload_bytes``), for the message.
        count: called once per request with ``True`` when it is refused (the server's counters).
        upload_paths: the routes that take a multipart upload by POST (default: every ``/v1`` path); a POST to
            another path goes on to the router, which answers 405 (with ``Allow``) or 404 as the schema says.
    """

    def takes_upload(path: str) -> bool:
        return path in upload_paths if upload_paths is not None else path.startswith("/v1/")

    def check(scope: dict) -> Response | None:
        path = scope["path"]
        headers = Headers(scope=scope)
        refusal = None
        if path.startswith("/v1/") and api_key and not key_matches(headers, api_key):
            refusal = error_response(401, "unauthorized", "missing or wrong API key (X-API-Key header)")
        elif scope["method"] == "POST":
            cl = headers.get("content-length")
            size = None
            if cl is not None:
                try:
                    size = int(cl)
                except ValueError:
                    refusal = error_response(400, "bad_request", "invalid Content-Length")
            if refusal is None and size is not None and size > body_limit:
                refusal = error_response(413, "too_large", f"request body of {size} bytes is over the limit of {upload_limit}")
            elif refusal is None and takes_upload(path) and not (headers.get("content-type") or "").lower().startswith("multipart/form-data"):
                refusal = error_response(415, "unsupported_media_type", "send the request as multipart/form-data (field 'files' or 'file')")
        count(refusal is not None)
        return refusal

    return check
