"""``medlens explain``: explanations of one image, by the bundle's task.

Classification bundles are explained by class-activation maps per label (``gradcam``, ``gradcam++``,
``hirescam``, ``layercam``, ``xgradcam``, ``eigencam``); anomaly bundles by their pixel reconstruction-error
map (``error_map``). ``explain(predictor, image)`` returns one :class:`Explanation` per explained label: a
heatmap in [0, 1] at the decoded image's own size, and an overlay PNG.

Example:
    >>> from medlens import Predictor, explain
    >>> p = Predictor.from_bundle("runs/nih/bundle")  # doctest: +SKIP
    >>> [e.label for e in explain(p, "chest.png", method="gradcam++")]  # doctest: +SKIP
    ['Effusion']
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from medlens.explanation import Explanation, explanation_from_map, image_png, overlay_png, write_explanations
from medlens.inference import ImageInput, Predictor, decode_input
from medlens.tasks import task_of


def list_methods(manifest=None) -> list[str]:
    """Explanation methods of a bundle's task (default: the classification methods).

    Example:
        >>> "gradcam" in list_methods()
        True
    """
    from medlens.tasks import default_task

    return (task_of(manifest) if manifest is not None else default_task()).explain_methods()


def explain(
    predictor: Predictor,
    image: ImageInput,
    label: str | Sequence[str] | None = None,
    method: str | None = None,
    metadata: dict | None = None,
    target_layer: str | None = None,
) -> list[Explanation]:
    """Explain one image: one heatmap + overlay per label.

    Args:
        predictor: a :class:`~medlens.inference.Predictor` (the ONNX predictor works when the bundle still has
            its PyTorch weights).
        image: a path (PNG, JPEG, DICOM, ...), bytes, numpy array or PIL image.
        label: a label name (or several); default: the task's choice (e.g. the predicted findings).
        method: one of the task's methods (``task.explain_methods()``); default: its first.
        metadata: patient metadata for fusion models (missing fields allowed).
        target_layer: module name to explain (class-activation maps); default: the deepest stage whose feature map
            is at least 7x7 at the bundle's input size. A layer with a 2x2 or smaller map is explained with a
            warning (``Explanation.warning``, also logged).

    Returns:
        One :class:`Explanation` per label, heatmaps at the decoded image's size.

    Raises:
        ValueError: unknown label, method or layer.

    Example:
        >>> exps = explain(predictor, "chest.png", label="Effusion", method="gradcam")  # doctest: +SKIP
    """
    task = task_of(predictor.manifest)
    methods = task.explain_methods()
    if not methods:  # an optional capability: a task may have no explanation method
        raise ValueError(f"a {task.name} model has no explanation methods")
    method = method or methods[0]
    task.check_method(method)
    img, src = decode_input(image)
    labels = None if label is None or (isinstance(label, str) and not label) else ([label] if isinstance(label, str) else list(label))
    return task.explain(predictor, img, src, labels, method, metadata, target_layer)


def explain_to_dir(bundle: str | Path, image: str | Path, out_dir: str | Path, labels: Sequence[str] | None = None, method: str | None = None,
                   target_layer: str | None = None, metadata: str | dict | None = None) -> list[Explanation]:
    """``medlens explain``: load a bundle, explain one image file and write the overlays into ``out_dir``."""
    meta = json.loads(metadata) if isinstance(metadata, str) else metadata
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("--metadata must be a JSON object, e.g. '{\"age\": 63, \"sex\": \"F\"}'")
    predictor = Predictor.from_bundle(bundle, batch_size=1)
    exps = explain(predictor, str(image), label=list(labels) if labels else None, method=method, metadata=meta, target_layer=target_layer)
    write_explanations(exps, out_dir, Path(image).stem)
    return exps


__all__ = ["Explanation", "explain", "explain_to_dir", "explanation_from_map", "image_png", "list_methods", "overlay_png", "write_explanations"]
