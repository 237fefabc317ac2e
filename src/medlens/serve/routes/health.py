"""``GET /health`` (liveness, no key), the web page ``GET /`` and its icon ``GET /favicon.ico``.

The page is a static file under ``serve/static/``, rendered in the browser from ``/v1/model`` with ``textContent``
only, and loads nothing from outside the server. The API reference ``GET /docs`` is :mod:`.docs`.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response

from medlens.serve.deps import get_state
from medlens.serve.state import ServerState

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter()


@router.get("/health")
async def health(state: ServerState = Depends(get_state)) -> dict:
    """Liveness. Without an API key it also names the task, labels and backend; with one it says nothing about the model."""
    out: dict = {"status": "ok", "uptime_s": round(time.time() - state.started, 1)}
    if not state.settings.api_key:
        out.update(task=state.manifest.task, labels=state.manifest.label_names, backend=state.predictor.backend)
    return out


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))


#: the page's icon: a small inline SVG (a lens over a cross), so ``/favicon.ico`` is never a 404
FAVICON_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="13" cy="13" r="10" fill="#fff" '
               'stroke="#1f5fa8" stroke-width="3"/><path d="M13 8v10M8 13h10" stroke="#b3261e" stroke-width="3"/>'
               '<path d="M20.5 20.5 29 29" stroke="#1f5fa8" stroke-width="4" stroke-linecap="round"/></svg>')


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})
