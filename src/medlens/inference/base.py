"""The runtime-independent part of prediction: decoding inputs, batching, the task's scores and decisions.

Inputs may be file paths (PNG, JPEG, DICOM, ...), raw bytes, PIL images or numpy arrays. Preprocessing,
temperature and thresholds come from the manifest, through the same functions training used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.io import ImageReadError, load_image, load_image_bytes, to_uint8
from medlens.data.transforms import make_transform
from medlens.progress import progress_iter
from medlens.tasks import Prediction, Task, task_of

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


def decode_input(x: ImageInput, name: str | None = None, max_pixels: int | None = None,
                 reduce_to: int | None = None) -> tuple[np.ndarray, str]:
    """Any supported input -> (uint8 image, source name).

    ``reduce_to`` (the model's image size): a JPEG path or bytes at least twice that size decodes at reduced DCT
    scale, as the training data loader reads it, so a file reaches the model the same way in training and in
    prediction (and 3-4x faster for a 1024 px file); leave it None where the full image is needed (overlays).

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
        return load_image(x, limit, reduce_to=reduce_to), name or str(x)
    if isinstance(x, (bytes, bytearray)):
        return load_image_bytes(bytes(x), name or "<bytes>", limit, reduce_to=reduce_to), name or "<bytes>"
    if isinstance(x, np.ndarray):
        arr = x
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise TypeError(f"{name or '<array>'}: an image array must be (H, W), (H, W, C) or (C, H, W), got shape {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = np.round(arr * 255.0).astype(np.uint8)
        elif arr.dtype != np.uint8:
            arr = to_uint8(arr)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)  # CHW -> HWC
        return arr, name or "<array>"
    try:
        from PIL import Image

        if isinstance(x, Image.Image):
            from medlens.data.io import from_pil

            return from_pil(x, limit), name or "<PIL image>"
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"unsupported input type {type(x).__name__}; pass a path, bytes, numpy array or PIL image")


#: test-time augmentation presets -> number of views averaged
TTA_PRESETS: dict[str, int] = {"none": 1, "hflip": 2, "flips": 3, "d4": 8}


def resolve_tta(tta: bool | str | None) -> str:
    """The TTA preset for ``tta``: ``True`` means ``hflip`` (its historic meaning), ``False``/None ``none``.

    Example:
        >>> resolve_tta(True), resolve_tta(False), resolve_tta("d4")
        ('hflip', 'none', 'd4')
    """
    if tta is None or tta is False:
        return "none"
    if tta is True:
        return "hflip"
    name = str(tta).strip().lower()
    if name in ("true", "false"):
        return "hflip" if name == "true" else "none"
    if name not in TTA_PRESETS:
        raise ValueError(f"unknown test-time augmentation {tta!r}; valid: {', '.join(TTA_PRESETS)}")
    return name


def tta_views(x: np.ndarray, preset: str) -> list[np.ndarray]:
    """The views of a preprocessed batch ``(N, C, H, W)`` that a preset averages over (the original first).

    ``hflip``: original + horizontal flip; ``flips``: original + horizontal + vertical flip; ``d4``: the 8
    rotations and reflections of the square (the dihedral group; needs H == W).

    Example:
        >>> len(tta_views(np.zeros((1, 3, 8, 8), np.float32), "d4"))
        8
    """
    preset = resolve_tta(preset)
    c = np.ascontiguousarray
    if preset == "none":
        return [x]
    if preset == "hflip":
        return [x, c(x[..., ::-1])]
    if preset == "flips":
        return [x, c(x[..., ::-1]), c(x[..., ::-1, :])]
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"test-time augmentation d4 needs square inputs; got {x.shape[-2]}x{x.shape[-1]} (use flips)")
    rots = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
    return [c(v) for r in rots for v in (r, r[..., ::-1])]


class BasePredictor:
    """Runtime-independent inference from a manifest: decoding, preprocessing, batching, the task's scores and decisions.

    Subclasses set the runtime (:meth:`run`): :class:`~medlens.inference.Predictor` (PyTorch),
    :class:`~medlens.inference.onnx.OnnxPredictor` (ONNX Runtime).
    """

    backend = "base"
    tta: bool | str = False

    @property
    def tta_preset(self) -> str:
        """The test-time augmentation preset in use (``none``, ``hflip``, ``flips``, ``d4``)."""
        return resolve_tta(self.tta)

    def init_common(self) -> None:
        """Task, transform and metadata encoder from the manifest (shared with the ONNX predictor)."""
        self.task: Task = task_of(self.manifest)
        if self.tta_preset != "none" and not self.task.supports_tta:
            raise ValueError(f"test-time augmentation does not apply to task {self.task.name!r}")
        self.transform = make_transform(self.manifest.preprocessing)
        self.ood = None  # the out-of-distribution gate (medlens.ood), when the bundle has one
        if self.manifest.ood is not None and getattr(self, "path", None) is not None:
            from medlens.ood import OodDetector, OodError

            try:
                self.ood = OodDetector.load(self.path, self.manifest.ood)
            except OodError as e:
                from medlens.bundle import BundleError

                raise BundleError(str(e)) from None
        self.meta_encoder = None
        if self.manifest.metadata_encoder:
            from medlens.data.metadata import MetadataEncoder

            self.meta_encoder = MetadataEncoder.from_dict(self.manifest.metadata_encoder)

    # ------------------------------------------------------------------ core
    @property
    def label_names(self) -> list[str]:
        return self.manifest.label_names

    def encode_metadata(self, metadata: Sequence[dict | None] | None, n: int) -> np.ndarray | None:
        if self.meta_encoder is None:
            return None
        rows = list(metadata) if metadata is not None else [None] * n
        if len(rows) != n:
            raise ValueError(f"{len(rows)} metadata rows for {n} images")
        return self.meta_encoder.transform_rows([r or {} for r in rows])

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """The runtime: preprocessed batch (N, C, H, W) -> the task head's raw outputs (N, K)."""
        raise NotImplementedError

    def run_full(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The runtime with the penultimate features the out-of-distribution gate scores: (raw outputs, features or
        None when the network has none)."""
        return self.run(x, meta), None

    def _forward(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        return self._forward_full(x, meta, features=False)[0]

    def _forward_full(self, x: np.ndarray, meta: np.ndarray | None, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw outputs, averaged over the views of the test-time augmentation preset (one view without), and the
        features of the image as given (the first view) when asked for."""
        views = tta_views(x, self.tta_preset)
        out, feats = self.run_full(views[0], meta) if features else (self.run(views[0], meta), None)
        for v in views[1:]:
            out = out + self.run(v, meta)
        bad = ~np.isfinite(out).all(axis=tuple(range(1, out.ndim))) if out.ndim > 1 else ~np.isfinite(out)
        if bad.any():  # NaN is not "negative": a broken model (weights, preprocessing) gives no scores at all
            raise ValueError(f"{getattr(self, 'path', None) or 'the model'}: the network's output is not finite (NaN or inf) "
                             f"for {int(bad.sum())} of {len(bad)} images; the bundle's weights or preprocessing are broken")
        return (out / len(views) if len(views) > 1 else out), feats

    def features_table(self, table) -> np.ndarray:
        """The penultimate features of every row of a :class:`SampleTable` (N, D), for fitting or checking the gate.

        Raises:
            ValueError: the network has no penultimate features (an ensemble, a detector).
        """
        out = []
        for i in range(0, len(table), self.batch_size):
            idx = range(i, min(i + self.batch_size, len(table)))
            imgs = [table.images[j] if table.in_memory else load_image(table.images[j], reduce_to=self.manifest.preprocessing.image_size) for j in idx]
            meta = None if self.meta_encoder is None else self.meta_encoder.transform_table(table.subset(np.asarray(list(idx))))
            _, f = self._forward_full(np.stack([self.transform(im) for im in imgs]), meta, features=True)
            if f is None:
                raise ValueError("this network has no penultimate features for an out-of-distribution gate")
            out.append(np.asarray(f, dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def features_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The penultimate features of decoded uint8 images (N, D), through the bundle's preprocessing (image-only
        networks; fusion models need :meth:`features_table`)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            _, f = self._forward_full(np.stack([self.transform(im) for im in images[i : i + self.batch_size]]), None, features=True)
            if f is None:
                raise ValueError("this network has no penultimate features for an out-of-distribution gate")
            out.append(np.asarray(f, dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def ood_scores_table(self, table) -> np.ndarray | None:
        """The gate's score of every row of a table (None: the bundle has no gate)."""
        return None if self.ood is None else self.ood.score(self.features_table(table))

    def activation(self, logits: np.ndarray) -> np.ndarray:
        """Raw outputs -> the task's scores (probabilities with the manifest's temperature, or anomaly scores)."""
        return self.task.activation(logits, self.manifest, self.calibrated)

    def predict_arrays(self, images: Sequence[np.ndarray], metadata: np.ndarray | None = None, logits: bool = False) -> np.ndarray:
        """Decoded uint8 images -> probabilities (N, K_out), batched (raw logits with ``logits=True``)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            x = np.stack([self.transform(im) for im in chunk])
            m = None if metadata is None else metadata[i : i + self.batch_size]
            z = self._forward(x, m)
            out.append(z if logits else self.activation(z))
        return np.concatenate(out) if out else np.zeros((0, self.task.num_outputs(self.manifest)), np.float32)

    def predict_table(self, table, progress: bool = False, logits: bool = False) -> np.ndarray:
        """Probabilities (or logits) for every row of a :class:`SampleTable` (used by evaluation)."""
        meta = None
        if self.meta_encoder is not None:
            meta = self.meta_encoder.transform_table(table)
        out = []
        rng = range(0, len(table), self.batch_size)
        for i in progress_iter(rng, progress, "predicting"):
            idx = range(i, min(i + self.batch_size, len(table)))
            imgs = [table.images[j] if table.in_memory else load_image(table.images[j], reduce_to=self.manifest.preprocessing.image_size) for j in idx]
            out.append(self.predict_arrays(imgs, None if meta is None else meta[idx.start : idx.stop], logits))
        return np.concatenate(out) if out else self.predict_arrays([])

    # ------------------------------------------------------------------ results
    def to_predictions(self, probs: np.ndarray, sources: Sequence[str]) -> list[Prediction]:
        """Scores -> one :class:`Prediction` per input, by the task's decision rule."""
        return self.task.to_predictions(probs, sources, self.manifest)

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
        for start in progress_iter(range(0, len(inputs), self.batch_size), progress, "predicting", total=len(inputs), step=self.batch_size):
            xs, srcs, where, metas = [], [], [], []
            for j in range(start, min(start + self.batch_size, len(inputs))):
                try:
                    img, src = decode_input(inputs[j], names[j], reduce_to=self.manifest.preprocessing.image_size)
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
                probs, ood_scores = self.scores_and_ood(x, m)
                preds = self.to_predictions(probs, srcs)
                self.apply_ood(preds, ood_scores)
                for j, pr in zip(where, preds, strict=True):
                    results[j] = pr
        return [r for r in results if r is not None]

    def predict_one(self, image: ImageInput, metadata: dict | None = None, name: str | None = None) -> Prediction:
        """Predict one input (see :meth:`predict`); the result may carry ``error``."""
        return self.predict([image], None if metadata is None else [metadata], None if name is None else [name])[0]

    def scores_and_ood(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (N, C, H, W) -> (the task's scores, the out-of-distribution gate's scores or None when the
        bundle has no gate): what every prediction path (the CLI, the server's batcher) computes."""
        probs, feats = self._predict_preprocessed_full(x, meta)
        return probs, (self.ood.score(feats) if self.ood is not None and feats is not None else None)

    def apply_ood(self, preds: Sequence[Prediction], ood_scores: np.ndarray | None) -> None:
        """Mark each prediction with the gate's score and verdict (nothing when there is no gate)."""
        if self.ood is None or ood_scores is None:
            return
        for pr, sc in zip(preds, ood_scores, strict=True):
            pr.ood_score, pr.ood, pr.ood_threshold = float(sc), bool(sc > self.ood.threshold), float(self.ood.threshold)

    def _predict_preprocessed(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """Preprocessed (N, C, H, W) -> probabilities, in chunks of ``batch_size``."""
        return self._predict_preprocessed_full(x, meta)[0]

    def _predict_preprocessed_full(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (N, C, H, W) -> (probabilities, the gate's features or None), in chunks of ``batch_size``."""
        want = self.ood is not None
        out, feats = [], []
        for i in range(0, len(x), self.batch_size):
            z, f = self._forward_full(x[i : i + self.batch_size], None if meta is None else meta[i : i + self.batch_size], want)
            out.append(self.activation(z))
            if f is not None:
                feats.append(np.asarray(f, dtype=np.float32))
        return np.concatenate(out), (np.concatenate(feats) if want and feats else None)

    def _encode_rows(self, rows: list[dict | None], srcs: list[str]) -> np.ndarray | None:
        """Encode the metadata rows of a batch (None for image-only models).

        Invalid metadata (e.g. a non-numeric age) is the caller's error, not a bad image: it raises a
        ``ValueError`` naming the input and the field instead of being reported per input.
        """
        if self.meta_encoder is None:
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
