"""Choosing a runtime: :func:`load_predictor` and :func:`predict`, importing torch only for the torch runtime.

``backend="onnx"`` on an exported bundle runs on ONNX Runtime alone (no torch, timm or Lightning import), so
a shell loop or a worklist hook pays only for NumPy, Pillow, OpenCV and ONNX Runtime.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens._atomic import atomic_open
from medlens.inference.base import BasePredictor, ImageInput
from medlens.tasks import Prediction


def load_predictor(bundle: Any, backend: str = "torch", **kw: Any) -> BasePredictor:
    """A predictor for a bundle folder (or a loaded ``Bundle``) on the ``torch`` or ``onnx`` runtime.

    An ONNX request on a folder with ``model.onnx`` never imports torch; a bundle never exported is exported in
    memory (torch needed; run ``medlens export`` once instead).

    Example:
        >>> p = load_predictor("runs/pneumoniamnist/bundle", backend="onnx")  # doctest: +SKIP
    """
    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown backend {backend!r}; valid: torch, onnx")
    if isinstance(bundle, (str, Path)) and backend == "onnx":
        from medlens.inference.onnx import ONNX_FILE, OnnxPredictor

        p = Path(bundle)
        if p.suffix == ".onnx" or (p / ONNX_FILE).is_file():
            return OnnxPredictor.from_bundle(p, **kw)
    from medlens.inference.predictor import Predictor

    if isinstance(bundle, (str, Path)):
        return Predictor.from_bundle(bundle, backend=backend, **kw)
    return Predictor(bundle, **kw)


def write_predictions_csv(preds: Sequence[Prediction], label_names: Sequence[str], path: str | Path, manifest: Any) -> Path:
    """One row per input: source, one probability column per label, per finding its threshold and decision,
    the predicted labels and the error (plain words). Atomic write.

    Args:
        preds: the predictions.
        label_names: the model's labels.
        path: the CSV file.
        manifest: the bundle manifest (its task says what the columns are).

    Example:
        >>> write_predictions_csv(preds, predictor.label_names, "preds.csv", predictor.manifest)  # doctest: +SKIP
    """
    from medlens.inference.table import prediction_rows

    path = Path(path)
    header, rows = prediction_rows(preds, manifest)
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def predict(bundle: Any, images: Sequence[ImageInput], out: str | Path | None = None, batch_size: int = 64, tta: bool | str = False,
            backend: str = "torch", metadata: Sequence[dict | None] | None = None, progress: bool = False, calibrated: bool = True,
            texts: Sequence[str | None] | None = None) -> list[Prediction]:
    """Predict images with a bundle; optionally write a CSV (``calibrated=False``: ignore the bundle's temperature).

    ``texts``: free text per image (e.g. its report), carried to each prediction's ``text`` and the CSV; never
    given to the model.

    Per-image clinical reports: :func:`medlens.clinical_report.predict_with_reports`.

    Example:
        >>> preds = predict("runs/demo/bundle", ["a.png", "b.dcm"], out="preds.csv")  # doctest: +SKIP
    """
    kw: dict[str, Any] = {"batch_size": batch_size, "tta": tta}
    if not calibrated:
        kw["calibrated"] = False
    predictor = load_predictor(bundle, backend, **kw)
    preds = predictor.predict(images, metadata=metadata, progress=progress)
    carry_texts(preds, texts)
    if out is not None:
        write_predictions_csv(preds, predictor.label_names, out, predictor.manifest)
    return preds


def carry_texts(preds: Sequence[Prediction], texts: Sequence[str | None] | None) -> None:
    """Give each prediction its input's text (``None``: nothing to carry).

    Raises:
        ValueError: not one text per prediction.
    """
    if texts is None:
        return
    if len(texts) != len(preds):
        raise ValueError(f"--text: {len(texts)} texts for {len(preds)} images")
    for p, t in zip(preds, texts, strict=True):
        p.text = t
