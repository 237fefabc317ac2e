"""What every route depends on: :func:`get_state` (the one :class:`ServerState`) and :data:`KEY` (the API key as
OpenAPI documents it, on the ``/v1`` routes of a server that has one: :func:`medlens.serve.app.key_contract`; the
check itself runs before any route, in :func:`medlens.serve.middleware.request_check`, which also takes
``Authorization: Bearer``)."""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from medlens.serve.state import ServerState

KEY = Security(APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server has an API key."))


def get_state(request: Request) -> ServerState:
    """The server's state (a FastAPI dependency)."""
    return request.app.state.medlens
