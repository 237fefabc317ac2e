"""The server's routes, one router per concern; each route takes the one :class:`~medlens.serve.state.ServerState`
through :func:`medlens.serve.deps.get_state`.

* ``health`` -- ``GET /health``, the page ``GET /`` and its icon (static files).
* ``docs`` -- ``GET /docs``: Swagger UI with "Try it out", its assets served by this server (no CDN).
* ``model`` -- ``GET /v1/model``.
* ``predict`` -- ``POST /v1/predict`` and ``POST /v1/preview``.
* ``explain`` -- ``POST /v1/explain``.
* ``report`` -- ``POST /v1/report``.
"""

from __future__ import annotations

from fastapi import APIRouter

from medlens.serve.routes import docs, explain, health, model, predict, report


def routers() -> list[APIRouter]:
    """Every router, in the order the API reference lists them."""
    return [health.router, docs.router, model.router, predict.router, explain.router, report.router]
