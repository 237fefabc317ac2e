"""Prediction from a trained bundle: the :class:`Predictor` API and ``medlens predict``.

Inputs may be file paths (PNG, JPEG, DICOM, ...), raw bytes, PIL images or numpy arrays. Preprocessing,
temperature and thresholds come from the manifest, through the same functions training used.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens._atomic import atomic_open
from medlens.bundle import Bundle, Manifest, load_bundle
from medlens.data.io import ImageReadError, load_image, load_image_bytes
from medlens.data.transforms import make_transform

log = logging.getLogger("medlens.predict")

ImageInput = Any  # str | Path | bytes | np.ndarray | PIL.Image.Image


def _input_errors() -> tuple[type[BaseException], ...]:
    import cv2

    return (ImageReadError, TypeError, ValueError, cv2.error)


_INPUT_ERRORS = _input_errors()  # what makes ONE input fail (reported in its Prediction), not the batch


def _as_input_list(inputs: Any) -> list:
    """A single input (path, bytes, image array, PIL image) or an iterable of them -> list."""
    if isinstance(inputs, (str, Path, bytes, bytearray)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    try:
        from PIL import Image

        if isinstance(inputs, Image.Image):
            return [inputs]
    except ImportError:  # pragma: no cover
        pass
    return list(inputs)


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        source: the file name or a description of the input.
        probabilities: label -> probability (binary: both classes; multiclass: softmax; multilabel: sigmoid).
        decisions: label -> bool at the manifest thresholds (binary: the positive class; multiclass: argmax).
        thresholds: label -> threshold used (binary/multilabel).
        predicted: the labels decided positive (multiclass: the argmax class).
        error: why the input could not be predicted (then the other fields are empty).
        score: anomaly score (task: anomaly).
    """

    source: str
    probabilities: dict[str, float] = field(default_factory=dict)
    decisions: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    predicted: list[str] = field(default_factory=list)
    error: str | None = None
    score: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_input(x: ImageInput, name: str | None = None, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """Any supported input -> (uint8 image, source name).

    Paths and bytes are decoded by format (PNG, JPEG, TIFF, BMP, DICOM, ...). Numpy arrays may be (H, W),
    (H, W, C) or (C, H, W); uint8 is used as is, booleans and floats within [0, 1] are scaled by 255, other
    dtypes (16-bit, Hounsfield units, ...) are min-max scaled to uint8.

    Example:
        >>> decode_input(np.zeros((2, 3), np.float32))[0].dtype
        dtype('uint8')
    """
    from medlens.data.io import MAX_PIXELS

    limit = max_pixels or MAX_PIXELS
    if isinstance(x, (str, Path)):
        return load_image(x, limit), name or str(x)
    if isinstance(x, (bytes, bytearray)):
        return load_image_bytes(bytes(x), name or "<bytes>", limit), name or "<bytes>"
    if isinstance(x, np.ndarray):
        arr = x
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise TypeError(f"{name or '<array>'}: an image array must be (H, W), (H, W, C) or (C, H, W), got shape {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = np.round(arr * 255.0).astype(np.uint8)
        elif arr.dtype != np.uint8:
            from medlens.data.io import _to_uint8

            arr = _to_uint8(arr)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        return arr, name or "<array>"
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            from medlens.data.io import _from_pil

            return _from_pil(x, limit), name or "<PIL image>"
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"unsupported input type {type(x).__name__}; pass a path, bytes, numpy array or PIL image")


class Predictor:
    """Batch inference from a bundle.

    Args:
        bundle: a loaded :class:`Bundle`.
        batch_size: images per forward pass.
        tta: average over the image and its horizontal flip.
        calibrated: apply the manifest's temperature.
        device: torch device for the torch backend.

    Example:
        >>> p = Predictor.from_bundle("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> p.predict(["chest.png"])[0].probabilities  # doctest: +SKIP
        {'normal': 0.08, 'pneumonia': 0.92}
    """

    backend = "torch"

    def __init__(self, bundle: Bundle, batch_size: int = 64, tta: bool = False, calibrated: bool = True, device: str = "cpu") -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.batch_size = batch_size
        self.tta = tta
        self.calibrated = calibrated
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.path: Path | None = bundle.path
        self._init_preprocessing()

    def _init_preprocessing(self) -> None:
        """Transform and metadata encoder from the manifest (shared with the ONNX predictor)."""
        self.transform = make_transform(self.manifest.preprocessing)
        self._meta_encoder = None
        if self.manifest.metadata_encoder:
            from medlens.data.metadata import MetadataEncoder

            self._meta_encoder = MetadataEncoder.from_dict(self.manifest.metadata_encoder)

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "torch", **kw: Any) -> Predictor:
        """Load a bundle and build a predictor for the ``torch`` or ``onnx`` backend."""
        if backend == "onnx":
            from medlens.export import OnnxPredictor

            return OnnxPredictor.from_bundle(path, **kw)
        if backend != "torch":
            raise ValueError(f"unknown backend {backend!r}; valid: torch, onnx")
        return cls(load_bundle(path), **kw)

    # ------------------------------------------------------------------ core
    @property
    def label_names(self) -> list[str]:
        return self.manifest.label_names

    def encode_metadata(self, metadata: Sequence[dict | None] | None, n: int) -> np.ndarray | None:
        if self._meta_encoder is None:
            return None
        rows = list(metadata) if metadata is not None else [None] * n
        if len(rows) != n:
            raise ValueError(f"{len(rows)} metadata rows for {n} images")
        return self._meta_encoder.transform_rows([r or {} for r in rows])

    def _forward(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Preprocessed batch (N, C, H, W) -> logits (N, K)."""
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            if self.manifest.task == "anomaly":  # one column: the anomaly score of the reconstruction
                from medlens.models.autoencoder import ScoreSpec, anomaly_scores

                return anomaly_scores(self.model, xt, ScoreSpec.from_dict(self.manifest.anomaly))[0].float().cpu().numpy()[:, None]
            mt = None if meta is None else torch.from_numpy(meta.astype(np.float32)).to(self.device)
            logits = self.model(xt, mt)
            if self.tta:
                logits = 0.5 * (logits + self.model(torch.flip(xt, dims=[3]), mt))
            return logits.float().cpu().numpy()

    def activation(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> probabilities with the manifest's temperature (when calibrated)."""
        if self.manifest.task == "anomaly":
            return logits  # the anomaly score is final (compared with the manifest's threshold), not a logit
        t = self.manifest.temperature if self.calibrated else 1.0
        z = logits / t
        if self.manifest.task == "multiclass":
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-z))

    def predict_arrays(self, images: Sequence[np.ndarray], metadata: np.ndarray | None = None, logits: bool = False) -> np.ndarray:
        """Decoded uint8 images -> probabilities (N, K_out), batched (raw logits with ``logits=True``)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            x = np.stack([self.transform(im) for im in chunk])
            m = None if metadata is None else metadata[i : i + self.batch_size]
            z = self._forward(x, m)
            out.append(z if logits else self.activation(z))
        k = 1 if self.manifest.task in ("binary", "anomaly") else len(self.label_names)
        return np.concatenate(out) if out else np.zeros((0, k), np.float32)

    def predict_table(self, table, progress: bool = False, logits: bool = False) -> np.ndarray:
        """Probabilities (or logits) for every row of a :class:`SampleTable` (used by evaluation)."""
        meta = None
        if self._meta_encoder is not None:
            meta = self._meta_encoder.transform_table(table)
        out = []
        rng = range(0, len(table), self.batch_size)
        for i in _progress(rng, progress, "predicting"):
            idx = range(i, min(i + self.batch_size, len(table)))
            imgs = [table.images[j] if table.in_memory else load_image(table.images[j]) for j in idx]
            out.append(self.predict_arrays(imgs, None if meta is None else meta[idx.start : idx.stop], logits))
        return np.concatenate(out) if out else self.predict_arrays([])

    # ------------------------------------------------------------------ results
    def to_predictions(self, probs: np.ndarray, sources: Sequence[str]) -> list[Prediction]:
        names = self.label_names
        task = self.manifest.task
        th = self.manifest.thresholds
        preds = []
        for p, src in zip(probs, sources, strict=True):
            if task == "anomaly":  # a score, not a probability: abnormal when score >= the fitted threshold
                thr, score = (th[0] if th else float("inf")), float(p[0])
                preds.append(Prediction(src, {}, {names[1]: score >= thr}, {names[1]: float(thr)}, [names[1] if score >= thr else names[0]], score=score))
            elif task == "binary":
                thr = th[0] if th else 0.5
                pos = float(p[0])
                dec = pos >= thr
                preds.append(Prediction(
                    src, {names[0]: 1.0 - pos, names[1]: pos}, {names[1]: bool(dec)}, {names[1]: float(thr)},
                    [names[1] if dec else names[0]],
                ))
            elif task == "multiclass":
                k = int(np.argmax(p))
                preds.append(Prediction(src, {n: float(v) for n, v in zip(names, p, strict=True)}, {n: j == k for j, n in enumerate(names)}, {}, [names[k]]))
            else:
                thr = th if th else [0.5] * len(names)
                dec = {n: bool(v >= t) for n, v, t in zip(names, p, thr, strict=True)}
                preds.append(Prediction(
                    src, {n: float(v) for n, v in zip(names, p, strict=True)}, dec,
                    {n: float(t) for n, t in zip(names, thr, strict=True)}, [n for n in names if dec[n]],
                ))
        return preds

    def predict(self, inputs: Iterable[ImageInput] | ImageInput, metadata: Sequence[dict | None] | None = None, names: Sequence[str] | None = None, progress: bool = False) -> list[Prediction]:
        """Predict a batch of inputs; unreadable inputs get a :class:`Prediction` with ``error`` set.

        Every input gets exactly one result, in order: a corrupt file or an unsupported array fails that input
        only. Invalid metadata (e.g. a non-numeric age) is a caller error and raises ``ValueError``.

        Args:
            inputs: paths, bytes, numpy arrays or PIL images (a single one is also accepted; a 4-D array
                (N, H, W, C) is N images).
            metadata: one dict per input for fusion models (missing fields allowed).
            names: display names of the inputs (default: the path or a description).
            progress: show a progress bar (on stderr).

        Example:
            >>> p.predict(["a.png", "b.dcm", np.zeros((28, 28), np.uint8)])  # doctest: +SKIP
        """
        inputs = _as_input_list(inputs)
        names = list(names) if names is not None else [None] * len(inputs)
        if len(names) != len(inputs):
            raise ValueError(f"{len(names)} names for {len(inputs)} inputs")
        results: list[Prediction | None] = [None] * len(inputs)
        meta_rows = list(metadata) if metadata is not None else [None] * len(inputs)
        if len(meta_rows) != len(inputs):
            raise ValueError(f"{len(meta_rows)} metadata rows for {len(inputs)} inputs")
        for start in _progress(range(0, len(inputs), self.batch_size), progress, "predicting", total=len(inputs), step=self.batch_size):
            xs, srcs, where, metas = [], [], [], []
            for j in range(start, min(start + self.batch_size, len(inputs))):
                try:
                    img, src = decode_input(inputs[j], names[j])
                    xs.append(self.transform(img))  # preprocessing errors (odd channel counts, ...) fail this input only
                except _INPUT_ERRORS as e:
                    results[j] = Prediction(str(names[j] or inputs[j] if isinstance(inputs[j], (str, Path)) else names[j] or f"<input {j}>"), error=str(e))
                    continue
                srcs.append(src)
                where.append(j)
                metas.append(meta_rows[j])
            if xs:
                m = self._encode_rows(metas, srcs)
                x = np.stack(xs)
                probs = self._predict_preprocessed(x, m)
                for j, pr in zip(where, self.to_predictions(probs, srcs), strict=True):
                    results[j] = pr
        return [r for r in results if r is not None]

    def predict_one(self, image: ImageInput, metadata: dict | None = None, name: str | None = None) -> Prediction:
        """Predict one input (see :meth:`predict`); the result may carry ``error``."""
        return self.predict([image], None if metadata is None else [metadata], None if name is None else [name])[0]

    def _predict_preprocessed(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Preprocessed (N, C, H, W) -> probabilities, in chunks of ``batch_size``."""
        out = [
            self.activation(self._forward(x[i : i + self.batch_size], None if meta is None else meta[i : i + self.batch_size]))
            for i in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(out)

    def _encode_rows(self, rows: list[dict | None], srcs: list[str]) -> np.ndarray | None:
        """Encode the metadata rows of a batch (None for image-only models).

        Invalid metadata (e.g. a non-numeric age) is the caller's error, not a bad image: it raises a
        ``ValueError`` naming the input and the field instead of being reported per input.
        """
        if self._meta_encoder is None:
            return None
        try:
            return self.encode_metadata(rows, len(rows))
        except ValueError:
            for r, src in zip(rows, srcs, strict=True):
                try:
                    self.encode_metadata([r], 1)
                except ValueError as e:
                    raise ValueError(f"{src}: metadata: {e}") from None
            raise


def _progress(it, enabled: bool, desc: str, total: int | None = None, step: int = 1):
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    items = list(it)
    n = total if total is not None else len(items)
    done = 0
    # stderr, so that stdout stays clean for results; a non-terminal stream gets the final bar once
    with Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(desc, total=n)
        for x in items:
            yield x
            inc = min(step, n - done) if total is not None else 1
            done += inc
            prog.advance(task, inc)


def write_predictions_csv(preds: Sequence[Prediction], label_names: Sequence[str], path: str | Path) -> Path:
    """One row per input: source, one probability column per label, predicted labels, error. Atomic write."""
    path = Path(path)
    with atomic_open(path, "w", newline="") as f:
            w = csv.writer(f)
            scored = any(p.score is not None for p in preds)  # anomaly bundles: a score column
            w.writerow(["source", *[f"prob_{n}" for n in label_names], *(["anomaly_score"] if scored else []), "predicted", "error"])
            for p in preds:
                probs = [("" if not p.ok or n not in p.probabilities else f"{p.probabilities[n]:.6f}") for n in label_names]
                score = ["" if p.score is None else f"{p.score:.6g}"] if scored else []
                w.writerow([p.source, *probs, *score, "|".join(p.predicted), p.error or ""])
    return path


def predict(bundle: str | Path | Bundle, images: Sequence[ImageInput], out: str | Path | None = None, batch_size: int = 64, tta: bool = False, backend: str = "torch", metadata: Sequence[dict | None] | None = None, progress: bool = False, calibrated: bool = True, report_dir: str | Path | None = None, report_method: str = "gradcam") -> list[Prediction]:
    """Predict images with a bundle; optionally write a CSV (``calibrated=False``: ignore the bundle's temperature).

    With ``report_dir``, one self-contained HTML report per predicted image (image, ``report_method``
    overlay, findings vs thresholds, model card, not-a-diagnosis statement) and an ``index.html`` are written
    there (see :mod:`medlens.clinical_report`).

    Example:
        >>> preds = predict("runs/demo/bundle", ["a.png", "b.dcm"], out="preds.csv")  # doctest: +SKIP
    """
    cal = {} if calibrated else {"calibrated": False}
    if isinstance(bundle, Bundle):
        predictor: Predictor = Predictor(bundle, batch_size=batch_size, tta=tta, **cal)
    else:
        predictor = Predictor.from_bundle(bundle, backend=backend, batch_size=batch_size, tta=tta, **cal)
    preds = predictor.predict(images, metadata=metadata, progress=progress)
    if out is not None:
        write_predictions_csv(preds, predictor.label_names, out)
    if report_dir is not None:
        from medlens.clinical_report import write_reports

        write_reports(predictor, images, preds, report_dir, method=report_method, metadata=metadata, progress=progress)
    return preds


# `medlens.predict` is both this module and the public function; calling the module calls the function.
from medlens._callable_module import make_module_callable  # noqa: E402

make_module_callable(__name__, "predict")
