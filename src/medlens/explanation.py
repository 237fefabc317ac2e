"""Explanation results and their rendering: heatmaps, overlays, PNG files (task-independent).

Every task's explainer returns :class:`Explanation` objects built by :func:`explanation_from_map`, so overlays,
files and reports look the same for class-activation maps and anomaly error maps.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np


@dataclass
class Explanation:
    """One label's explanation of one image.

    Attributes:
        label: the explained label (class name).
        method: the method's name (``gradcam``, ``eigencam``, ``error_map``, ...).
        probability: the model's probability for ``label`` on this image (anomaly: the anomaly probability).
        heatmap: float32 (H, W) in [0, 1] at the ORIGINAL decoded image size (1 = most important).
        overlay_png: PNG bytes of the heatmap blended over the image.
        target_layer: the network layer the map was computed at (empty for error maps).
        warning: one line for the reader when the map is coarse (e.g. a 2x2 feature map), else None.
    """

    label: str
    method: str
    probability: float
    heatmap: np.ndarray
    overlay_png: bytes
    target_layer: str = ""
    warning: str | None = None


# ---------------------------------------------------------------------------------------------- rendering
def to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, max_side: int = 1024) -> bytes:
    """Blend a [0, 1] heatmap (JET colours) over a uint8 image and encode it as PNG.

    Args:
        image: uint8 (H, W) or (H, W, C).
        heatmap: float (H, W) in [0, 1], the image's size.
        alpha: weight of the colour map.
        max_side: larger images are shrunk to this side first (the PNG is for display).

    Example:
        >>> overlay_png(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32))[:4]
        b'\\x89PNG'
    """
    rgb = to_rgb(image).astype(np.float32)
    heat = np.clip(heatmap.astype(np.float32), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_AREA)
    colour = cv2.applyColorMap(np.uint8(np.round(255 * heat)), cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    out = np.clip((1.0 - alpha) * rgb + alpha * colour, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(out[:, :, ::-1]))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def image_png(image: np.ndarray, max_side: int = 1024) -> bytes:
    """A uint8 image as PNG bytes (shrunk to ``max_side``), for reports."""
    rgb = to_rgb(image)
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def explanation_from_map(image: np.ndarray, cam: np.ndarray, label: str, method: str, probability: float, target_layer: str = "", normalize: bool = True) -> Explanation:
    """Build an :class:`Explanation` from a map at any resolution: resize to the image, scale to [0, 1], render.

    Also the hook for other explainers (e.g. anomaly error maps) to produce the same output.
    """
    h, w = image.shape[:2]
    m = np.nan_to_num(np.asarray(cam, dtype=np.float32).squeeze(), nan=0.0)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {m.shape}")
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    if normalize:
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    heat = np.clip(m, 0.0, 1.0).astype(np.float32)
    return Explanation(label, method, float(probability), heat, overlay_png(image, heat), target_layer)


# ---------------------------------------------------------------------------------------------- files
def _safe(s: str) -> str:
    """A file-name-safe version of a label or method name (``gradcam++`` -> ``gradcampp``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("+", "p")).strip("_") or "x"


def write_explanations(explanations: Sequence[Explanation], out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>_<label>_<method>.png`` (overlay) and ``.npy`` (heatmap) per explanation, plus a JSON summary.

    Example:
        >>> write_explanations(explain(p, "a.png"), "out", "a")  # doctest: +SKIP
    """
    from medlens._atomic import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    summary: list[dict[str, Any]] = []
    for e in explanations:
        base = f"{_safe(stem)}_{_safe(e.label)}_{_safe(e.method)}"
        png = out / f"{base}.png"
        tmp = png.with_name(f".{png.name}.tmp")
        tmp.write_bytes(e.overlay_png)
        tmp.replace(png)
        npy = out / f"{base}.npy"
        tmp = npy.with_name(f".{base}.tmp.npy")
        np.save(tmp, e.heatmap)
        tmp.replace(npy)
        paths += [png, npy]
        summary.append({"label": e.label, "method": e.method, "probability": e.probability, "target_layer": e.target_layer,
                        "warning": e.warning, "overlay": png.name, "heatmap": npy.name})
    js = out / f"{_safe(stem)}_explanations.json"
    write_json_atomic(js, summary)
    paths.append(js)
    return paths
