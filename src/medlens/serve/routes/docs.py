"""``GET /docs``: Swagger UI served by this server, with "Try it out", and nothing loaded from another host.

FastAPI's own ``/docs`` loads Swagger UI's JavaScript and CSS from a CDN, which a hospital network or an offline
machine cannot reach. Here the two files come from an installed package (``fastapi-offline``, in the ``serve``
extra, which ships a Swagger UI 5 build; 5 reads the OpenAPI 3.1 schema FastAPI writes) and are served under
``/docs/assets/``; the page's Content-Security-Policy allows scripts, styles and requests to this server only.
Without the package ``/docs`` falls back to the plain static reference ``serve/static/docs.html`` (no "Try it out").
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from medlens.serve.errors import ApiError

log = logging.getLogger("medlens.serve")

STATIC = Path(__file__).resolve().parents[1] / "static"
#: where the assets are served, below the page
ASSETS = "/docs/assets"
#: the only files served from the package (name -> media type); nothing else of its folder is reachable
ASSET_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8"}
#: the page reaches this server only: Swagger UI's script and styles, the schema and the calls "Try it out" makes;
#: 'unsafe-inline' for the one inline script that starts Swagger UI (FastAPI's page) and its inline styles;
#: data: for the small inline SVG/PNG icons Swagger UI draws; blob: for a downloaded binary response (an overlay PNG)
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; object-src 'none'; base-uri 'self'; "
            "frame-ancestors 'none'")
#: Swagger UI options: no validator badge (it would call validator.swagger.io), models collapsed, durations shown
SWAGGER_PARAMETERS = {"validatorUrl": None, "defaultModelsExpandDepth": 0, "displayRequestDuration": True, "tryItOutEnabled": False}

router = APIRouter()


@lru_cache(maxsize=1)
def swagger_assets() -> Path | None:
    """The folder holding Swagger UI's ``swagger-ui-bundle.js`` and ``swagger-ui.css`` (from ``fastapi-offline``), or
    None when the package is not installed (``/docs`` then serves the plain reference).

    Example:
        >>> (swagger_assets() / "swagger-ui.css").is_file()  # doctest: +SKIP
        True
    """
    try:
        import fastapi_offline
    except ImportError:
        log.info("fastapi-offline is not installed: /docs serves the plain API reference (pip install 'medlens[serve]')")
        return None
    folder = Path(fastapi_offline.__file__).resolve().parent / "static"
    return folder if all((folder / name).is_file() for name in ASSET_FILES) else None


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json`` (its assets from this server), or the static reference without them."""
    if swagger_assets() is None:
        return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"))
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} API",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}/favicon.ico", swagger_ui_parameters=SWAGGER_PARAMETERS,
    )
    # FastAPI's page has no language: screen readers need one (axe: html-has-lang)
    html = page.body.decode("utf-8").replace("<html>", '<html lang="en">', 1)
    return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP})


@router.get(ASSETS + "/{name}", include_in_schema=False)
async def docs_asset(name: str) -> FileResponse:
    """One of Swagger UI's two files, cached by the browser for a day."""
    folder = swagger_assets()
    if folder is None or name not in ASSET_FILES:
        raise ApiError(404, "not_found", f"no such file: {name}")
    return FileResponse(folder / name, media_type=ASSET_FILES[name], headers={"Cache-Control": "public, max-age=86400"})
