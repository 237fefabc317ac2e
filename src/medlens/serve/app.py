"""The REST API and the clinicians' web page, on FastAPI.

Routes (all ``/v1`` routes check the API key when one is set):

* ``GET /health`` -- liveness, no key needed.
* ``GET /v1/model`` -- the manifest: labels, thresholds, preprocessing, metrics, intended use.
* ``POST /v1/predict`` -- one or more images (PNG, JPEG, DICOM, ...) as multipart ``files``; optional
  ``metadata`` form field: a JSON object, or a list with one object per file (fusion models).
* ``POST /v1/explain`` -- one image, ``label`` and ``method`` form fields -> overlay PNG.
* ``POST /v1/report`` -- one image -> the per-image HTML report (download).
* ``POST /v1/preview`` -- one image (e.g. DICOM, which browsers cannot show) -> a PNG of the decoded image.
* ``GET /`` -- the web page. ``/docs`` -- the API reference (a built-in page, no external assets);
  ``/openapi.json`` -- the OpenAPI schema.

Safety: request bodies are counted as they stream in (:class:`BodyLimitMiddleware`), whatever the headers
say, and refused with 413 once they pass the limit -- a chunked upload without Content-Length never has more
than the limit spooled to memory or disk; images over ``max_pixels`` are refused from their header, before
decoding (decompression bombs); formats are recognised from bytes, not names; client metadata is type-checked
field by field; every client mistake is JSON with a 4xx code naming the field, and the server keeps serving.
``GET /v1/model`` publishes what a client needs and nothing about the host (no paths, config or environment).
The model
is loaded once; concurrent requests are coalesced into micro-batches that run in a worker thread, so clients
do not serialise on the event loop.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlens.inference import BasePredictor, load_predictor
from medlens.tasks import task_of

log = logging.getLogger("medlens.serve")

STATIC = Path(__file__).parent / "static"


#: Room for the multipart envelope (boundaries, part headers, form fields) above ``max_upload_bytes``.
ENVELOPE_BYTES = 64 * 1024
#: Longest side of a ``/v1/preview`` PNG, in pixels.
PREVIEW_MAX_SIDE = 1024


class ApiError(Exception):
    """An error returned to the client as JSON with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class ServeSettings:
    """Server limits and options.

    Attributes:
        api_key: when set, every ``/v1`` route needs ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``.
        max_upload_bytes: largest request body accepted (all files together).
        max_pixels: largest image (width x height) decoded.
        max_files: most images in one predict request.
        max_batch: most images per forward pass when coalescing concurrent requests.
        max_wait_ms: how long the batcher waits for more requests before running a batch.
        tta: test-time augmentation preset for every prediction (``none``, ``hflip``, ``flips``, ``d4``),
            published by ``/v1/model``.
    """

    api_key: str | None = None
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_files: int = 64
    max_batch: int = 32
    max_wait_ms: float = 2.0
    tta: str = "none"


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {400: "Bad request (e.g. an empty file)", 401: "Missing or wrong API key", 413: "Body, file, image or file count over the limit",
            415: "Not a readable image, or not multipart/form-data", 422: "A field is invalid (the message names it)"}
    return {c: {"model": ErrorBody, "description": what[c]} for c in codes}


UPLOAD_ERRORS = _responses(400, 401, 413, 415, 422)


def read_api_key_file(path: str | Path) -> str:
    """The API key in the first line of ``path`` (so it never appears in ``ps``).

    Raises:
        ValueError: naming the file when it is missing, unreadable or empty.

    Example:
        >>> read_api_key_file("/run/secrets/medlens_key")  # doctest: +SKIP
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--api-key-file {p}: cannot read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
    key = (text.splitlines() or [""])[0].strip()
    if not key:
        raise ValueError(f"--api-key-file {p}: the first line is empty (expected the API key)")
    return key


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
            await _error(413, "too_large", f"request body is over the limit of {self.limit} bytes")(scope, receive, send)


class GuardMiddleware:
    """ASGI middleware: answers at once with ``check(scope)``'s refusal (a response), or passes the request on."""

    def __init__(self, app: Any, check: Callable[[dict], Any]) -> None:
        self.app, self.check = app, check

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            refusal = self.check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ----------------------------------------------------------------------------------------------- batching
class MicroBatcher:
    """Coalesces concurrent requests into batched forward passes, for every backend (torch and ONNX).

    Requests hand in images already decoded *and preprocessed* (:meth:`prepare`, run in the request's worker
    thread), so the batch thread only stacks them and runs the model: ``predictor.run`` on the stacked batch,
    then the task's activation. Batches run one at a time in their own thread (the runtime uses every core);
    while one runs, new requests queue up and form the next, larger batch. A predictor with test-time
    augmentation is batched through ``predict_arrays`` on the decoded images instead.

    Example:
        >>> b = MicroBatcher(predictor, max_batch=32); await b.start()  # doctest: +SKIP
        >>> probs = await b.submit([b.prepare(img)], None)  # doctest: +SKIP
    """

    def __init__(self, predictor: BasePredictor, max_batch: int = 32, max_wait_ms: float = 2.0) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None
        # TTA averages two runs inside the predictor: hand it decoded images and let it preprocess them
        self.preprocessed = not getattr(predictor, "tta", False)
        self.batches = 0
        self.images = 0

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """A decoded uint8 image -> what :meth:`submit` takes (the preprocessed float32 (C, H, W) array)."""
        return self.predictor.transform(image) if self.preprocessed else image

    def infer(self, items: list[np.ndarray], metadata: np.ndarray | None) -> np.ndarray:
        """Prepared items -> scores (N, K), in forward passes of at most ``max_batch`` images (blocking)."""
        if not self.preprocessed:
            return self.predictor.predict_arrays(items, metadata)
        x = np.stack(items)
        p = self.predictor
        out = [p.activation(p.run(x[i : i + self.max_batch], None if metadata is None else metadata[i : i + self.max_batch]))
               for i in range(0, len(x), self.max_batch)]
        return np.concatenate(out)

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlens-batch")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    async def submit(self, items: list[np.ndarray], metadata: np.ndarray | None) -> np.ndarray:
        """Scores (len(items), K) for the prepared items (:meth:`prepare`) of one request."""
        if self.queue is None:  # not started (e.g. used without lifespan): run directly
            return await asyncio.to_thread(self.infer, items, metadata)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((items, metadata, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None
        while True:
            first = await self.queue.get()
            batch = [first]
            n = len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                if not self.queue.empty():  # already waiting: no timer needed
                    item = self.queue.get_nowait()
                else:
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                batch.append(item)
                n += len(item[0])
            await self._run(batch)

    async def _run(self, batch: list) -> None:
        items = [im for b in batch for im in b[0]]
        metas = [b[1] for b in batch]
        meta = None if any(m is None for m in metas) else np.concatenate(metas)
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self._pool, self.infer, items, meta)
        except Exception as e:  # a failed batch fails its requests, not the server
            for b in batch:
                if not b[2].done():
                    b[2].set_exception(e)
            return
        self.batches += 1
        self.images += len(items)
        i = 0
        for b in batch:
            k = len(b[0])
            if not b[2].done():
                b[2].set_result(probs[i : i + k])
            i += k


# ------------------------------------------------------------------------------------------------ helpers
async def _read_upload(f: UploadFile, settings: ServeSettings) -> bytes:
    data = await f.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "too_large", f"{f.filename}: file is larger than {settings.max_upload_bytes} bytes")
    if not data:
        raise ApiError(400, "empty_file", f"{f.filename or 'upload'}: the file is empty")
    return data


def _decode(data: bytes, name: str, settings: ServeSettings) -> np.ndarray:
    from medlens.data.io import ImageReadError, load_image_bytes

    try:
        return load_image_bytes(data, name, settings.max_pixels)
    except ImageReadError as e:
        msg = str(e)
        if "over the limit" in msg and "aspect ratio" not in msg:  # too many pixels; a thin strip is unreadable (415)
            raise ApiError(413, "too_many_pixels", msg) from None
        raise ApiError(415, "unreadable_image", msg) from None


def _prepare(batcher: MicroBatcher, img: np.ndarray, name: str) -> np.ndarray:
    """A decoded image -> the batcher's input; an image the preprocessing cannot take is the client's 415."""
    try:
        return batcher.prepare(img)
    except (ValueError, TypeError) as e:
        raise ApiError(415, "unreadable_image", f"{name}: cannot be preprocessed ({e})") from None


def _parse_metadata(text: str | None, n: int) -> list[dict | None] | None:
    from medlens.data.metadata import MetadataError, parse_metadata_json

    if text is None or text.strip() == "":
        return None
    try:
        obj = parse_metadata_json(text, "metadata")
    except MetadataError as e:
        raise ApiError(422, "bad_metadata", str(e)) from None
    if isinstance(obj, dict):
        return [obj] * n
    if isinstance(obj, list) and len(obj) == n and all(isinstance(x, dict) or x is None for x in obj):
        return obj
    raise ApiError(422, "bad_metadata", f"metadata must be a JSON object or a list of {n} objects")


def _encode_metadata(predictor: BasePredictor, rows: list[dict | None] | None, n: int) -> np.ndarray | None:
    """The encoded metadata of a fusion model (None otherwise); a value of the wrong type is the client's 422."""
    from medlens.data.metadata import MetadataError

    if predictor.meta_encoder is None:
        return None
    try:
        return predictor.encode_metadata(rows, n)
    except MetadataError as e:
        raise ApiError(422, "bad_metadata", str(e) if str(e).startswith("metadata") else f"metadata: {e}") from None


def _preview_png(img: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((max_side, max_side))  # keeps the aspect ratio; never enlarges
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _safe_name(name: str | None) -> str:
    # client-given names are echoed back only as plain labels, never used as paths
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:200] or "upload"


# ---------------------------------------------------------------------------------------------------- app
def create_app(bundle: str | Path, backend: str = "torch", settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app for a bundle (the model is loaded once, here).

    Example:
        >>> app = create_app("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from contextlib import asynccontextmanager

    settings = settings or ServeSettings(api_key=os.environ.get("MEDLENS_API_KEY") or None)
    tta = False if settings.tta in ("none", "", None) else settings.tta
    predictor = load_predictor(bundle, backend, batch_size=settings.max_batch, tta=tta)  # ONNX: no torch import
    manifest = predictor.manifest
    task = task_of(manifest)
    methods = task.explain_methods()
    batcher = MicroBatcher(predictor, settings.max_batch, settings.max_wait_ms)
    # decoding and preprocessing run here, off the event loop; cv2/numpy release the GIL for most of it
    workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="medlens-decode")
    explain_lock = threading.Lock()  # Grad-CAM hooks and gradients: one explanation at a time
    model_name = manifest.architecture.get("backbone", manifest.architecture.get("type"))
    state: dict[str, Any] = {"explain_predictor": None, "started": time.time(), "requests": 0, "errors": 0}

    def explain_predictor() -> BasePredictor:
        # A separate torch copy for explanations, so their hooks never touch the batched predictions.
        if state["explain_predictor"] is None:
            if backend == "torch":
                import copy

                state["explain_predictor"] = load_predictor(copy.deepcopy(predictor.bundle), batch_size=1)
            else:
                state["explain_predictor"] = load_predictor(bundle, "torch", batch_size=1)
        return state["explain_predictor"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()
        workers.shutdown(wait=False)

    app = FastAPI(
        title="medlens",
        version=manifest.versions.get("medlens", ""),
        description=f"Model: {manifest.architecture.get('backbone', manifest.architecture.get('type'))} ({manifest.task}); "
        f"labels: {', '.join(manifest.label_names)}. {manifest.intended_use}",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their assets from a CDN: /docs below is self-contained
        redoc_url=None,
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.settings = settings
    body_limit = settings.max_upload_bytes + ENVELOPE_BYTES
    # documents the key in OpenAPI; the check itself is in `guard` (which also takes Authorization: Bearer)
    key_scheme = Security(APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed when the server has an API key."))

    # ------------------------------------------------------------------ middleware: size limit, api key
    def refused() -> None:
        state["errors"] += 1

    app.add_middleware(BodyLimitMiddleware, limit=body_limit, on_refuse=refused)  # inner: counts what streams in

    def guard(scope: dict) -> JSONResponse | None:
        """The API key, Content-Length and content-type checks; the refusal, or None to go on."""
        state["requests"] += 1
        path = scope["path"]
        headers = Headers(scope=scope)
        if path.startswith("/v1/") and settings.api_key:
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization") or ""
            if auth.lower().startswith("bearer "):
                given = given or auth[7:].strip()
            if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
                state["errors"] += 1
                return _error(401, "unauthorized", "missing or wrong API key (X-API-Key header)")
        if scope["method"] == "POST":
            cl = headers.get("content-length")
            if cl is not None:
                try:
                    size = int(cl)
                except ValueError:
                    return _error(400, "bad_request", "invalid Content-Length")
                if size > body_limit:
                    state["errors"] += 1
                    return _error(413, "too_large", f"request body of {size} bytes is over the limit of {settings.max_upload_bytes}")
            if path.startswith("/v1/") and not (headers.get("content-type") or "").lower().startswith("multipart/form-data"):
                state["errors"] += 1
                return _error(415, "unsupported_media_type", "send the request as multipart/form-data (field 'files' or 'file')")
        return None

    # a plain ASGI middleware (outer): Starlette's BaseHTTPMiddleware costs a task group and streams per request
    app.add_middleware(GuardMiddleware, check=guard)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        state["errors"] += 1
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        state["errors"] += 1
        errs = exc.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", []))
        return _error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        state["errors"] += 1
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, "internal_error", f"{type(exc).__name__}: the request could not be processed")

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "task": manifest.task, "labels": manifest.label_names, "backend": predictor.backend,
                "uptime_s": round(time.time() - state["started"], 1)}

    @app.get("/v1/model", dependencies=[key_scheme], responses=_responses(401))
    async def model_info() -> dict:
        """What a client needs: labels, task, thresholds, presentation, explanation methods, input spec, metrics."""
        d = public_model_info(manifest)
        d["input"] = {"formats": ["png", "jpeg", "tiff", "bmp", "dicom"], "max_upload_bytes": settings.max_upload_bytes,
                      "max_pixels": settings.max_pixels, "max_files": settings.max_files, "preprocessing": manifest.preprocessing.to_dict()}
        d["backend"] = predictor.backend
        d["explain_methods"] = methods
        d["presentation"] = task.presentation(manifest).to_dict()
        d["tta"] = settings.tta
        if "target_layers" not in state and backend != "torch":
            state["target_layers"] = []  # an ONNX server lists no layers: it stays torch-free until an explanation is asked
        if "target_layers" not in state:
            try:
                state["target_layers"] = task.target_layers(explain_predictor().model)
            except (ValueError, OSError, ImportError):  # an ONNX-only folder: no PyTorch network to list
                state["target_layers"] = []
        d["target_layers"] = state["target_layers"]
        d["metadata_fields"] = _metadata_fields(manifest)
        return d

    @app.post("/v1/predict", dependencies=[key_scheme], responses=UPLOAD_ERRORS)
    async def predict(files: list[UploadFile] = File(..., description="Images: PNG, JPEG, DICOM, ..."), metadata: str | None = Form(None)) -> dict:
        if len(files) > settings.max_files:
            raise ApiError(413, "too_many_files", f"{len(files)} files; at most {settings.max_files} per request")
        blobs = [await _read_upload(f, settings) for f in files]  # each upload read once, never re-encoded
        names = [_safe_name(f.filename) for f in files]

        def prepare() -> list[np.ndarray]:
            return [_prepare(batcher, _decode(b, n, settings), n) for b, n in zip(blobs, names, strict=True)]

        items = await asyncio.get_running_loop().run_in_executor(workers, prepare)
        meta = _encode_metadata(predictor, _parse_metadata(metadata, len(items)), len(items))
        probs = await batcher.submit(items, meta)
        preds = predictor.to_predictions(probs, names)
        # a JSONResponse directly: the body is plain JSON types already, FastAPI's encoder pass would only cost time
        return JSONResponse({"model": model_name, "task": manifest.task,
                             "predictions": [_pred_json(p, task.findings(p, manifest)) for p in preds]})

    @app.post("/v1/explain", dependencies=[key_scheme], responses=UPLOAD_ERRORS, response_class=Response)
    async def explain(file: UploadFile = File(...), label: str | None = Form(None), method: str | None = Form(None), metadata: str | None = Form(None),
                      target_layer: str | None = Form(None)):
        data = await _read_upload(file, settings)
        img = await asyncio.to_thread(_decode, data, _safe_name(file.filename), settings)
        if label is not None and label != "" and label not in manifest.label_names:
            raise ApiError(422, "unknown_label", f"label {label!r} is not one of {manifest.label_names}")
        method = method or methods[0]
        if method not in methods:
            raise ApiError(422, "unknown_method", f"method {method!r} is not one of {methods}")
        meta_rows = _parse_metadata(metadata, 1)
        _encode_metadata(predictor, meta_rows, 1)  # wrong types: 422 naming the field, before any work

        def run():
            from medlens.interpret import explain as _explain

            with explain_lock:
                try:
                    return _explain(explain_predictor(), img, label=label or None, method=method,
                                    metadata=None if meta_rows is None else meta_rows[0], target_layer=target_layer or None)
                except ValueError as e:  # an unknown target layer or label: the client's mistake
                    raise ApiError(422, "invalid_request", str(e)) from None

        exps = await asyncio.to_thread(run)
        if not exps:
            raise ApiError(422, "nothing_to_explain", "no label to explain for this image")
        e = exps[0]
        kind = task.presentation(manifest).value_kind
        headers = {"X-Medlens-Label": _header_safe(e.label), "X-Medlens-Method": e.method, "X-Medlens-Value": f"{e.probability:.6g}",
                   "X-Medlens-Value-Kind": kind, "X-Medlens-Target-Layer": e.target_layer or ""}
        if kind == "probability":  # a probability header only where the value is one
            headers["X-Medlens-Probability"] = f"{e.probability:.6f}"
        return Response(e.overlay_png, media_type="image/png", headers=headers)

    @app.post("/v1/report", dependencies=[key_scheme], responses=UPLOAD_ERRORS, response_class=HTMLResponse)
    async def report(file: UploadFile = File(...), method: str | None = Form(None), metadata: str | None = Form(None)):
        data = await _read_upload(file, settings)
        name = _safe_name(file.filename)
        img = await asyncio.to_thread(_decode, data, name, settings)
        method = method or methods[0]
        if method not in methods:
            raise ApiError(422, "unknown_method", f"method {method!r} is not one of {methods}")
        meta_rows = _parse_metadata(metadata, 1)
        _encode_metadata(predictor, meta_rows, 1)

        def run():
            from medlens.clinical_report import image_report_html
            from medlens.interpret import explain as _explain

            p = explain_predictor()
            pred = p.predict([img], metadata=meta_rows, names=[name])[0]
            with explain_lock:
                exps = _explain(p, img, method=method, metadata=None if meta_rows is None else meta_rows[0])
            return image_report_html(img, pred, exps, manifest)

        html = await asyncio.to_thread(run)
        stem = name.rsplit(".", 1)[0] or "image"
        return HTMLResponse(html, headers={"Content-Disposition": f'attachment; filename="medlens-report-{stem}.html"'})

    @app.post("/v1/preview", dependencies=[key_scheme], responses=UPLOAD_ERRORS, response_class=Response)
    async def preview(file: UploadFile = File(..., description="One image: PNG, JPEG, DICOM, ...")):
        """A PNG of the decoded image (longest side at most 1024 px): how the page shows DICOM files."""
        data = await _read_upload(file, settings)
        img = await asyncio.to_thread(_decode, data, _safe_name(file.filename), settings)
        png = await asyncio.to_thread(_preview_png, img)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    return app


#: Fields of the manifest a client may see; the rest (config, extra, history, environment) stays on the host.
PUBLIC_FIELDS = ("format", "format_version", "created", "task", "label_names", "architecture", "preprocessing", "thresholds",
                 "temperature", "anomaly", "weights_source", "metrics", "intended_use")
_PATH_LIKE = re.compile(r"^(~|/|[A-Za-z]:[\\/]|\\\\)")


def _scrub(value: Any) -> Any:
    """Drop path-like strings (absolute or home paths) at any depth: they describe the host, not the model."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not (isinstance(v, str) and _PATH_LIKE.match(v))}
    if isinstance(value, list):
        return [_scrub(v) for v in value if not (isinstance(v, str) and _PATH_LIKE.match(v))]
    return value


def public_model_info(manifest) -> dict[str, Any]:
    """The manifest as ``GET /v1/model`` publishes it: an allow-list of fields, no host paths, medlens' version only.

    Example:
        >>> public_model_info(read_manifest("runs/x/bundle"))["label_names"]  # doctest: +SKIP
        ['normal', 'pneumonia']
    """
    d = manifest.to_dict()
    out = {k: _scrub(d[k]) for k in PUBLIC_FIELDS if k in d}
    out["versions"] = {"medlens": str(manifest.versions.get("medlens", ""))}
    return out


def _header_safe(text: str) -> str:
    """HTTP headers carry latin-1 only: other characters are escaped (``\\uXXXX``)."""
    return text.encode("latin-1", "backslashreplace").decode("latin-1") if text.isascii() else text.encode("ascii", "backslashreplace").decode("ascii")


def _metadata_fields(manifest) -> dict[str, Any]:
    enc = manifest.metadata_encoder or {}
    out: dict[str, Any] = {"numeric": [], "categorical": {}}
    for item in enc.get("numeric", []) or []:
        out["numeric"].append(item["name"] if isinstance(item, dict) else item)
    cats = enc.get("categorical", []) or []
    for item in cats:
        if isinstance(item, dict):
            out["categorical"][item.get("name")] = [v for v in item.get("vocabulary", item.get("vocab", item.get("categories", []))) if v != "unknown"]
    return out


def _pred_json(p, findings) -> dict:
    return {"source": p.source, "probabilities": p.probabilities, "thresholds": p.thresholds, "decisions": p.decisions,
            "predicted": p.predicted, "findings": [f.to_dict() for f in findings], **({"score": p.score} if p.score is not None else {})}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


# The API reference at /docs: built from /openapi.json in the browser with textContent only, no external assets
# (Swagger UI and ReDoc would load theirs from a CDN, which an offline hospital network cannot reach).
DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medlens API</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<style>body{font:14px system-ui,sans-serif;max-width:960px;margin:24px auto;padding:0 12px;color:#222}
h2{margin-top:28px}.op{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0}
.m{display:inline-block;min-width:46px;font-weight:600}.muted{color:#666}code,pre{background:#f5f5f5;padding:1px 4px}
pre{padding:8px;overflow:auto}td,th{text-align:left;padding:2px 10px 2px 0;vertical-align:top}</style></head>
<body><h1 id="title">medlens API</h1><p id="desc" class="muted"></p>
<p>Every <code>/v1</code> route needs the header <code>X-API-Key</code> when the server has a key.
Errors are JSON: <code>{"error": {"code": ..., "message": ...}}</code>. The schema: <a href="openapi.json">openapi.json</a>.</p>
<div id="ops">loading...</div>
<script>
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function schemaName(s) { if (!s) return ""; if (s.$ref) return s.$ref.split("/").pop(); if (s.type === "array") return schemaName(s.items) + "[]"; return s.type || ""; }
fetch("openapi.json").then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("desc").textContent = spec.info.description || "";
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const box = el("div", undefined, "op");
      const h = el("div"); h.append(el("span", method.toUpperCase(), "m"), el("code", path)); box.append(h);
      if (op.summary) box.append(el("div", op.summary));
      if (op.description) box.append(el("p", op.description, "muted"));
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        for (const [ctype, c] of Object.entries(body)) {
          let s = c.schema || {};
          if (s.$ref) s = spec.components.schemas[s.$ref.split("/").pop()] || {};
          const t = el("table"); t.append(el("caption", "Body (" + ctype + ")"));
          for (const [name, p] of Object.entries(s.properties || {})) {
            const tr = el("tr"); tr.append(el("td", name + ((s.required || []).includes(name) ? " *" : "")), el("td", schemaName(p.anyOf ? p.anyOf[0] : p)), el("td", p.description || ""));
            t.append(tr);
          }
          box.append(t);
        }
      }
      const rt = el("table"); rt.append(el("caption", "Responses"));
      for (const [code, r] of Object.entries(op.responses || {})) { const tr = el("tr"); tr.append(el("td", code), el("td", r.description || "")); rt.append(tr); }
      box.append(rt);
      ops.append(box);
    }
  }
}).catch(e => { document.getElementById("ops").textContent = "could not load openapi.json: " + e; });
</script></body></html>
"""


def serve(bundle: str | Path, host: str = "127.0.0.1", port: int = 8000, backend: str = "torch", api_key: str | None = None, max_upload_mb: float = 32.0, max_pixels: int = 50_000_000,
          api_key_file: str | Path | None = None, tta: str = "none") -> None:
    """Run the server (blocking). Binds to 127.0.0.1 unless told otherwise.

    The API key comes from ``api_key``, else the first line of ``api_key_file``, else ``$MEDLENS_API_KEY``
    (the last two keep it out of ``ps``).

    Example:
        >>> serve("runs/pneumoniamnist/bundle", port=8000, api_key_file="/run/secrets/key")  # doctest: +SKIP
    """
    import uvicorn

    if api_key_file is not None and not api_key:
        api_key = read_api_key_file(api_key_file)
    settings = ServeSettings(api_key=api_key or os.environ.get("MEDLENS_API_KEY") or None,
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, tta=tta)
    app = create_app(bundle, backend, settings)
    log.info("serving %s on http://%s:%d (backend %s, api key %s)", bundle, host, port, backend, "on" if settings.api_key else "off")
    # no access log (a line per request costs ~10 % at hundreds of requests/s); http/loop "auto" take httptools
    # and uvloop when installed, else h11 and asyncio
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, http="auto", loop="auto", backlog=2048)
