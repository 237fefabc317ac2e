"""Error-map explanations of anomaly bundles: where the autoencoder reconstructed worst."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from medlens.data.io import load_image
from medlens.explanation import Explanation, explanation_from_map
from medlens.tasks.base import PredictorLike

if TYPE_CHECKING:
    from medlens.data.samples import SampleTable

ERROR_MAP = "error_map"


def error_map_explanation(predictor: PredictorLike, img: np.ndarray) -> Explanation:
    """The pixel error map of one decoded image as an :class:`~medlens.explanation.Explanation`.

    The map is the bundle's error map (squared error or SSIM dissimilarity) resized to the decoded image and
    divided by ``manifest.task_section["pixel_scale"]`` (the 99.5th percentile of pixel errors on validation
    normals), so colours mean the same on every image. ``probability`` carries the anomaly score.

    Example:
        >>> e = error_map_explanation(Predictor.from_bundle("runs/ae/bundle"), load_image("chest.png"))  # doctest: +SKIP
        >>> e.heatmap.shape == load_image("chest.png").shape[:2]  # doctest: +SKIP
        True
    """
    m = predictor.manifest
    emap, score = error_map_array(predictor, img)
    # Fixed scale from the validation normals (their 99.5th-percentile pixel error = full colour), so a
    # well-reconstructed image stays dark instead of being stretched; old bundles fall back to the map's max.
    scale = float((m.task_section or {}).get("pixel_scale") or 0.0) or float(emap.max())
    heat = np.clip(emap / scale, 0.0, 1.0) if scale > 0 else emap
    return explanation_from_map(img, heat, m.label_names[1], ERROR_MAP, float(score), target_layer="", normalize=False)


def error_map_array(predictor: PredictorLike, image: np.ndarray) -> tuple[np.ndarray, float]:
    """(error map resized to the decoded image's (H, W), anomaly score) for one decoded uint8 image.

    Example:
        >>> emap, score = error_map_array(predictor, load_image("chest.png"))  # doctest: +SKIP
    """
    import cv2

    m = predictor.manifest
    x_np = predictor.transform(image)[None]
    run_map = getattr(predictor, "run_map", None)
    onnx_out = run_map(x_np) if run_map is not None else None  # ONNX Runtime: the graph's own error-map output
    if onnx_out is not None:
        score, emap = float(onnx_out[0][0, 0]), onnx_out[1][0, 0]
    else:
        import torch

        from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps

        spec = ScoreSpec.from_dict(m.task_section or {})
        x = torch.from_numpy(x_np)
        with torch.inference_mode():
            maps = error_map(x, predictor.model(x), spec)
            score = float(scores_from_error_maps(maps, spec)[0])
        emap = maps[0, 0].float().cpu().numpy()
    h, w = image.shape[:2]
    if emap.shape != (h, w):
        emap = cv2.resize(emap, (w, h), interpolation=cv2.INTER_LINEAR)
    return emap.astype(np.float32), score


def pixel_error_reference(predictor: PredictorLike, normals: SampleTable, q: float = 99.5) -> float:
    """The ``q``-th percentile of pixel errors over a table of normal images (the error-map colour scale)."""
    import torch

    from medlens.models.autoencoder import ScoreSpec, error_map

    spec = ScoreSpec.from_dict(predictor.manifest.task_section or {})
    vals = []
    for i in range(0, len(normals), predictor.batch_size):
        idx = range(i, min(i + predictor.batch_size, len(normals)))
        imgs = [normals.images[j] if normals.in_memory else load_image(normals.images[j]) for j in idx]
        x = torch.from_numpy(np.stack([predictor.transform(im) for im in imgs]))
        with torch.inference_mode():
            vals.append(error_map(x, predictor.model(x), spec).flatten().float().cpu().numpy())
    return float(np.percentile(np.concatenate(vals), q)) if vals else 0.0
