"""The REST API and the clinicians' web page, on FastAPI: :func:`create_app` and :func:`serve`.

Routes (all ``/v1`` routes check the API key when one is set, and only then declare it in the OpenAPI schema;
see :mod:`medlens.serve.routes`):

* ``GET /health`` -- liveness, no key needed (with a key set it says nothing about the model).
* ``GET /v1/model`` -- the manifest: labels, thresholds, preprocessing, metrics, intended use.
* ``POST /v1/predict`` -- one or more images (PNG, JPEG, DICOM, ...) as multipart ``files``; optional
  ``metadata`` form field: a JSON object, or a list with one object per file (fusion models).
* ``POST /v1/explain`` -- one image, ``label`` and ``method`` form fields -> overlay PNG.
* ``POST /v1/report`` -- one image -> the per-image HTML report (download).
* ``POST /v1/preview`` -- one image (e.g. DICOM, which browsers cannot show) -> a PNG of the decoded image.
* ``GET /`` -- the web page (a static file); ``/docs`` -- Swagger UI with "Try it out", its assets served here;
  neither loads anything from another host.
  ``/openapi.json`` -- the OpenAPI schema, narrowed to the model's labels, methods and layers on an open server
  (with a key: generic, and the narrowed one at ``GET /v1/openapi.json``; :mod:`medlens.serve.contract`).
* ``/gradio`` -- with ``ui="gradio"`` (the ``gradio`` extra): a Gradio app over the same model
  (:mod:`medlens.serve.gradio_ui`).

Safety: request bodies are counted as they stream in (:class:`~medlens.serve.middleware.BodyLimitMiddleware`),
whatever the headers say, and refused with 413 once they pass the limit; images over ``max_pixels`` are refused
from their header, before decoding, and the decoded pixels of all requests together stay within
``max_pixels_in_flight`` (requests over it wait, then get 503 ``busy``); formats are recognised from bytes, not
names; client metadata is type-checked field by field; every error is JSON with one line naming the field, and
the server keeps serving. The model is loaded once; concurrent requests are coalesced into micro-batches that
run in a worker thread, so clients do not serialise on the event loop.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, FastAPI

from medlens.serve.batching import MicroBatcher
from medlens.serve.contract import install_contract
from medlens.serve.deps import KEY
from medlens.serve.errors import ApiError, install_error_handlers, responses
from medlens.serve.middleware import ENVELOPE_BYTES, BodyLimitMiddleware, GuardMiddleware, request_check
from medlens.serve.public import api_description, public_model_info
from medlens.serve.routes import routers
from medlens.serve.settings import ServeSettings, read_api_key_file
from medlens.serve.state import ServerState

log = logging.getLogger("medlens.serve")


#: the user interfaces ``create_app`` can add to the page: ``page`` (the built-in page only) or ``gradio`` (also a
#: Gradio app at ``/gradio``, on the same model)
UIS = ("page", "gradio")


def create_app(bundle: str | Path, backend: str = "torch", settings: ServeSettings | None = None, ui: str = "page") -> FastAPI:
    """Build the FastAPI app for a bundle (the model is loaded once, here).

    Args:
        bundle: the bundle folder (or an exported ONNX folder with ``backend="onnx"``).
        backend: ``torch`` or ``onnx``.
        settings: limits and options (default: :class:`ServeSettings` with ``$MEDLENS_API_KEY``).
        ui: ``page`` (the web page at ``/``) or ``gradio`` (also a Gradio app at ``/gradio`` on the same model;
            needs the ``gradio`` extra).

    Raises:
        ValueError: an unknown ``ui`` (before the model is loaded).

    Example:
        >>> app = create_app("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    if ui not in UIS:
        raise ValueError(f"--ui {ui}: one of {', '.join(UIS)}")
    settings = settings or ServeSettings(api_key=os.environ.get("MEDLENS_API_KEY") or None)
    state = ServerState.load(bundle, backend, settings)
    app = _new_app(state)
    _add_limits(app, state)
    install_error_handlers(app, state.count_error)
    for router in routers():
        app.include_router(router, **key_contract(router, keyed=bool(settings.api_key)))
    install_contract(app, state)  # the schema names this model's choices (with a key: at /v1/openapi.json)
    if ui == "gradio":
        from medlens.serve.gradio_ui import mount_gradio

        mount_gradio(app, state)
    return app


def key_contract(router: APIRouter, keyed: bool) -> dict:
    """What the OpenAPI schema says about the API key for ``router``'s routes: on a server with a key, the ``/v1``
    routes declare the ``X-API-Key`` scheme and their 401; on an open server nothing (no key is asked, none is
    documented). The check itself is :func:`~medlens.serve.middleware.request_check`'s, on the same ``/v1/`` prefix."""
    if not keyed or not any(str(getattr(r, "path", "")).startswith("/v1/") for r in router.routes):
        return {}
    return {"dependencies": [KEY], "responses": responses(401)}


def _new_app(state: ServerState) -> FastAPI:
    """The FastAPI app holding ``state`` (``app.state.medlens``), starting and stopping the batcher with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.batcher.start()
        yield
        await state.close()

    app = FastAPI(
        title="medlens",
        version=state.manifest.versions.get("medlens", ""),
        description=api_description(state.manifest, keyed=bool(state.settings.api_key)),
        lifespan=lifespan,
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load their assets from a CDN: /docs is routes/docs.py's
        redoc_url=None,
    )
    app.state.medlens = state
    app.state.predictor = state.predictor
    app.state.batcher = state.batcher
    app.state.settings = state.settings
    return app


def _add_limits(app: FastAPI, state: ServerState) -> None:
    """The body limit (inner: counts what streams in) and the up-front checks (outer: key, size, content type)."""
    s = state.settings
    body_limit = s.max_upload_bytes + ENVELOPE_BYTES
    app.add_middleware(BodyLimitMiddleware, limit=body_limit, on_refuse=state.count_error)
    uploads = {r.path for router in routers() for r in router.routes if "POST" in (getattr(r, "methods", None) or ()) and r.path.startswith("/v1/")}
    app.add_middleware(GuardMiddleware, check=request_check(s.api_key, body_limit, s.max_upload_bytes, state.count, upload_paths=uploads))


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, backend: str = "torch", api_key: str | None = None, max_upload_mb: float = 32.0,
          max_pixels: int = 50_000_000, api_key_file: str | Path | None = None, tta: str = "none", max_pixels_in_flight: int | None = None,
          ui: str = "page") -> None:
    """Run the server (blocking). Binds to 127.0.0.1 unless told otherwise; ``ui="gradio"`` adds the Gradio app at
    ``/gradio`` (:func:`create_app`).

    The API key comes from ``api_key``, else the first line of ``api_key_file``, else ``$MEDLENS_API_KEY``
    (the last two keep it out of ``ps``).

    Raises:
        ValueError: a port outside 1-65535, an unknown ``ui`` or an unreadable key file (before the model is loaded).

    Example:
        >>> serve("runs/pneumoniamnist/bundle", port=8000, api_key_file="/run/secrets/key")  # doctest: +SKIP
    """
    import uvicorn

    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--port {port}: a TCP port is 1-65535")
    if ui not in UIS:
        raise ValueError(f"--ui {ui}: one of {', '.join(UIS)}")
    if api_key_file is not None and not api_key:
        api_key = read_api_key_file(api_key_file)
    settings = ServeSettings(api_key=api_key or os.environ.get("MEDLENS_API_KEY") or None, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             max_pixels=max_pixels, tta=tta, max_pixels_in_flight=max_pixels_in_flight)
    app = create_app(bundle, backend, settings, ui=ui)
    log.info("serving %s on http://%s:%d (backend %s, api key %s)%s", bundle, host, port, backend, "on" if settings.api_key else "off",
             f"; Gradio UI at http://{host}:{port}/gradio/" if ui == "gradio" else "")
    # no access log (a line per request costs ~10 % at hundreds of requests/s); http/loop "auto" take httptools
    # and uvloop when installed, else h11 and asyncio
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http="auto", loop="auto", backlog=2048)


__all__ = ["ENVELOPE_BYTES", "UIS", "ApiError", "MicroBatcher", "ServeSettings", "ServerState", "create_app", "public_model_info",
           "read_api_key_file", "serve"]
