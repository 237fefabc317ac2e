"""The one state object of a running server: the model, its task, the limits and the shared machinery.

Every route reads it (``request.app.state.medlens``, through :func:`medlens.serve.routes.get_state`); nothing
else is shared between routes. Predictions for ``/v1/predict``, ``/v1/explain`` and ``/v1/report`` all come from
:meth:`ServerState.predict` -- the same preprocessing, test-time augmentation, batching and calibration -- so
the three routes give the same number for the same image.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.inference import BasePredictor, Prediction, load_predictor
from medlens.serve.batching import MicroBatcher
from medlens.serve.errors import ApiError
from medlens.serve.settings import ServeSettings
from medlens.serve.uploads import PixelBudget, declared_pixels, decode_image, encode_metadata
from medlens.tasks import Task, task_of

if TYPE_CHECKING:
    from medlens.explanation import Explanation

log = logging.getLogger("medlens.serve")

#: explanations are unavailable on this server (an exported ONNX model without its PyTorch weights)
_UNAVAILABLE = "unavailable"


@dataclass
class ServerState:
    """What the routes share.

    Attributes:
        bundle: the bundle (or exported ONNX folder) being served.
        backend: ``torch`` or ``onnx``.
        settings: the limits and options.
        predictor: the serving predictor (loaded once).
        batcher: coalesces concurrent predictions into batches.
        workers: threads that decode and preprocess uploads, off the event loop.
        pixels: the decoded-pixel budget across requests.
        explain_lock: one explanation at a time (Grad-CAM hooks and gradients).
        load_lock: the explanation predictor is loaded once.
        started: when the server started (``time.time()``).
        requests: requests seen; errors: requests answered with an error.
    """

    bundle: str | Path
    backend: str
    settings: ServeSettings
    predictor: BasePredictor
    batcher: MicroBatcher
    workers: ThreadPoolExecutor
    pixels: PixelBudget
    explain_lock: threading.Lock = field(default_factory=threading.Lock)
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)
    requests: int = 0
    errors: int = 0
    explainer_cache: BasePredictor | str | None = None
    target_layers_cache: list[str] | None = None

    @classmethod
    def load(cls, bundle: str | Path, backend: str, settings: ServeSettings) -> ServerState:
        """Load the model once and build the shared machinery (ONNX: no torch import)."""
        predictor = load_predictor(bundle, backend, batch_size=settings.max_batch, tta=settings.tta_preset)
        return cls(bundle=bundle, backend=backend, settings=settings, predictor=predictor,
                   batcher=MicroBatcher(predictor, settings.max_batch, settings.max_wait_ms),
                   workers=ThreadPoolExecutor(max_workers=max(1, settings.decode_threads), thread_name_prefix="medlens-decode"),
                   pixels=PixelBudget(settings.pixel_budget))

    # ------------------------------------------------------------------ the model
    @property
    def manifest(self) -> Any:
        return self.predictor.manifest

    @property
    def task(self) -> Task:
        return task_of(self.manifest)

    @property
    def model_name(self) -> str:
        arch = self.manifest.architecture
        return str(arch.get("backbone", arch.get("type")))

    def count(self, refused: bool) -> None:
        """Count a request (and an error when ``refused``)."""
        self.requests += 1
        self.errors += int(refused)

    def count_error(self) -> None:
        self.errors += 1

    # ------------------------------------------------------------------ decoding
    @asynccontextmanager
    async def decoded(self, data: bytes, name: str) -> AsyncIterator[np.ndarray]:
        """The decoded image, its pixels held in the budget until the block ends."""
        n = await self.pixels.acquire(declared_pixels(data, self.settings.max_pixels), self.settings.decode_wait_s, name)
        try:
            yield await asyncio.get_running_loop().run_in_executor(self.workers, decode_image, data, name, self.settings.max_pixels)
        finally:
            self.pixels.release(n)

    def prepare(self, img: np.ndarray, name: str) -> np.ndarray:
        """A decoded image -> the batcher's input; an image the preprocessing cannot take is the client's 415."""
        try:
            return self.batcher.prepare(img)
        except (ValueError, TypeError) as e:
            raise ApiError(415, "unreadable_image", f"{name}: cannot be preprocessed ({e})") from None

    async def prepare_uploads(self, blobs: Sequence[bytes], names: Sequence[str]) -> list[np.ndarray]:
        """Decode and preprocess uploads one after the other, each within the pixel budget; the decoded image is
        dropped as soon as it is preprocessed."""
        loop = asyncio.get_running_loop()
        items = []
        for data, name in zip(blobs, names, strict=True):
            n = await self.pixels.acquire(declared_pixels(data, self.settings.max_pixels), self.settings.decode_wait_s, name)
            try:
                items.append(await loop.run_in_executor(self.workers, self._decode_and_prepare, data, name))
            finally:
                self.pixels.release(n)
        return items

    def _decode_and_prepare(self, data: bytes, name: str) -> np.ndarray:
        return self.prepare(decode_image(data, name, self.settings.max_pixels), name)

    # ------------------------------------------------------------------ predictions: one path for every route
    async def predict(self, items: list[np.ndarray], metadata: list[dict | None] | None, names: Sequence[str]) -> list[Prediction]:
        """Prepared images (:meth:`prepare`) -> one prediction each, through the batcher: the only way this server
        computes a prediction. A model output that is not a number is a 500 naming the model, not a client's error."""
        meta = encode_metadata(self.predictor, metadata, len(items))
        try:
            scores, ood_scores = await self.batcher.submit(items, meta)
            finite = bool(np.all(np.isfinite(scores)))
        except ValueError as e:  # the predictor's own check (test-time augmentation path); its message names the bundle's path
            if "not finite" not in str(e):
                raise
            log.error("prediction failed: %s", e)
            finite = False
        if not finite:
            raise ApiError(500, "model_error", "the model's output is not a number (NaN or infinite) for "
                                               f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: the bundle cannot be "
                                               "served as it is (check its manifest.json preprocessing and weights)")
        preds = self.predictor.to_predictions(scores, list(names))
        self.predictor.apply_ood(preds, ood_scores)  # the out-of-distribution gate, when the bundle has one
        return preds

    async def predict_image(self, img: np.ndarray, name: str, metadata: list[dict | None] | None) -> Prediction:
        """One decoded image -> its prediction, by :meth:`predict` (preprocessed off the event loop)."""
        item = await asyncio.get_running_loop().run_in_executor(self.workers, self.prepare, img, name)
        return (await self.predict([item], metadata, [name]))[0]

    def check_metadata(self, rows: list[dict | None] | None) -> None:
        """Wrong metadata types are the client's 422, naming the field, before any work."""
        encode_metadata(self.predictor, rows, 1 if rows is None else len(rows))

    def record(self, prediction: Prediction) -> dict[str, Any]:
        """A prediction as the API returns it: the task's own record."""
        return self.task.record(prediction, self.manifest)

    # ------------------------------------------------------------------ explanations
    def explain_methods(self) -> list[str]:
        return list(self.task.explain_methods())

    def check_method(self, method: str | None) -> str:
        """The explanation method to use (default: the task's first); 422 when the task has none or not this one."""
        methods = self.explain_methods()
        if not methods:
            raise ApiError(422, "no_explanations", f"this model ({self.task.name}) offers no explanation methods")
        method = method or methods[0]
        if method not in methods:
            raise ApiError(422, "unknown_method", f"method {method!r} is not one of {methods}")
        return method

    def explainer(self) -> BasePredictor | None:
        """A separate torch predictor for explanations (their hooks never touch the batched predictions), with the
        serving predictor's test-time augmentation and calibration; None when the server has no PyTorch weights
        (an exported ONNX folder)."""
        with self.load_lock:
            if self.explainer_cache is None:
                kw = {"batch_size": 1, "tta": self.settings.tta_preset}
                bundle = getattr(self.predictor, "bundle", None)
                try:
                    if bundle is not None:  # the torch backend: a copy of the loaded bundle, no second read from disk
                        self.explainer_cache = load_predictor(copy.deepcopy(bundle), **kw)
                    else:
                        self.explainer_cache = load_predictor(self.bundle, "torch", **kw)
                except (ValueError, OSError, ImportError) as e:  # no weights beside model.onnx, or no torch installed
                    log.info("explanations unavailable: %s", e)  # the server's log may name paths; clients never see them
                    self.explainer_cache = _UNAVAILABLE
        return None if isinstance(self.explainer_cache, str) else self.explainer_cache

    def require_explainer(self) -> BasePredictor:
        p = self.explainer()
        if p is None:
            raise ApiError(422, "no_explanations", "explanations need the model's PyTorch weights (model.safetensors); this server "
                                                   "runs an exported ONNX model without them: serve the bundle folder instead")
        return p

    def target_layers(self) -> list[str]:
        """Layers a client may pick for an explanation (ONNX: none listed until an explanation is asked)."""
        if self.target_layers_cache is None:
            if self.backend != "torch" and not isinstance(self.explainer_cache, BasePredictor):
                return []
            p = self.explainer()
            self.target_layers_cache = [] if p is None else self.task.target_layers(p.model)
        return self.target_layers_cache

    def explain(self, img: np.ndarray, labels: list[str] | None, method: str, metadata: dict | None, target_layer: str | None,
                prediction: Prediction) -> list[Any]:
        """Explanations of one decoded image (blocking: run it in a thread), each carrying the value of
        ``prediction`` (from :meth:`predict`) for its label where the task's findings name it."""
        from medlens.interpret import explain as explain_image

        p = self.require_explainer()
        with self.explain_lock:
            try:
                exps = explain_image(p, img, label=labels, method=method, metadata=metadata, target_layer=target_layer)
            except ValueError as e:  # an unknown target layer or label: the client's mistake
                raise ApiError(422, "invalid_request", str(e)) from None
        values = {f.label: f.value for f in self.task.findings(prediction, self.manifest) if f.value is not None}
        return [replace(e, probability=float(values[e.label])) if e.label in values else e for e in exps]

    async def explanation(self, data: bytes, name: str, label: str | None, method: str | None, rows: list[dict | None] | None,
                          target_layer: str | None) -> Explanation:
        """An upload -> its first :class:`~medlens.explanation.Explanation` (``/v1/explain`` and the Gradio UI): the
        method and label checked (422), the metadata checked before any work, the value from :meth:`predict`."""
        method = self.check_method(method)
        if label and label not in self.manifest.label_names:
            raise ApiError(422, "unknown_label", f"label {label!r} is not one of {self.manifest.label_names}")
        self.check_metadata(rows)  # wrong types: 422 naming the field, before any work
        await asyncio.to_thread(self.require_explainer)  # loads the PyTorch copy once, off the event loop
        async with self.decoded(data, name) as img:
            pred = await self.predict_image(img, name, rows)
            exps = await asyncio.to_thread(self.explain, img, [label] if label else None, method, None if rows is None else rows[0],
                                           target_layer or None, pred)
        if not exps:
            raise ApiError(422, "nothing_to_explain", "no label to explain for this image")
        return exps[0]

    async def report_html(self, data: bytes, name: str, method: str | None, rows: list[dict | None] | None) -> str:
        """An upload -> the per-image HTML report (``/v1/report`` and the Gradio UI): the prediction of
        :meth:`predict`, the explanation overlay (none without PyTorch weights), the findings and the model card."""
        from medlens.clinical_report import image_report_html

        method = self.check_method(method)
        self.check_metadata(rows)
        async with self.decoded(data, name) as img:
            pred = await self.predict_image(img, name, rows)

            def render() -> str:
                exps = [] if self.explainer() is None else self.explain(img, None, method, None if rows is None else rows[0], None, pred)
                return image_report_html(img, pred, exps, self.manifest)

            return await asyncio.to_thread(render)

    async def close(self) -> None:
        await self.batcher.stop()
        self.workers.shutdown(wait=False)
