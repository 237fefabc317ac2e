"""Prediction from a trained bundle on PyTorch: :class:`Predictor` (the runtime-independent part: :mod:`medlens.inference.base`).

Inputs may be file paths (PNG, JPEG, DICOM, ...), raw bytes, PIL images or numpy arrays. Preprocessing,
temperature and thresholds come from the manifest, through the same functions training used; outputs, scores
and decisions come from the bundle's task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.bundle import WEIGHTS, Bundle, Manifest, load_bundle
from medlens.inference.base import BasePredictor

log = logging.getLogger("medlens.predict")


class Predictor(BasePredictor):
    """Batch inference from a bundle on PyTorch.

    Args:
        bundle: a loaded :class:`Bundle`.
        batch_size: images per forward pass.
        tta: test-time augmentation preset averaged over (tasks that support it): ``none``, ``hflip``, ``flips``
            (original + horizontal + vertical flip) or ``d4`` (the 8 rotations/reflections); ``True`` = ``hflip``.
        calibrated: apply the manifest's temperature.
        device: torch device.

    Example:
        >>> p = Predictor.from_bundle("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> p.predict(["chest.png"])[0].probabilities  # doctest: +SKIP
        {'normal': 0.08, 'pneumonia': 0.92}
    """

    backend = "torch"

    def __init__(self, bundle: Bundle, batch_size: int = 64, tta: bool | str = False, calibrated: bool = True, device: str = "cpu") -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.batch_size = batch_size
        self.tta = tta
        self.calibrated = calibrated
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.path: Path | None = bundle.path
        self.init_common()
        self.head = self.task.inference_head(self.model, self.manifest).eval()
        fh = self.task.feature_head(self.model, self.manifest) if self.task.supports_ood else None
        self.feature_head = None if fh is None else fh.eval()
        segs = getattr(self.ood, "segments", None)
        if segs and getattr(fh, "stages", False) and segs != self.model.ood_segments():
            from medlens.bundle import BundleError

            raise BundleError(f"{self.path or 'the bundle'}: its out-of-distribution gate was fitted on stage features {segs}, "
                              f"this version of medlens reads {self.model.ood_segments()}; retrain, or drop the gate (manifest 'ood')")

    @classmethod
    def from_bundle(cls, path: str | Path, backend: str = "torch", **kw: Any) -> BasePredictor:
        """Load a bundle and build a predictor for the ``torch`` or ``onnx`` backend.

        An ONNX request on a bundle never exported gets an in-memory export (slower start; run
        ``medlens export`` once instead).
        """
        if backend == "onnx":
            from medlens.inference.onnx import ONNX_FILE, OnnxPredictor

            folder = Path(path).parent if Path(path).suffix == ".onnx" else Path(path)
            if folder.is_dir() and not (folder / ONNX_FILE).is_file() and (folder / WEIGHTS).is_file():
                from medlens.export import DEFAULT_OPSET, export_to_bytes

                log.warning("%s has no %s: exporting in memory (run `medlens export %s` once to skip this)", folder, ONNX_FILE, folder)
                bundle = load_bundle(folder)
                data, _ = export_to_bytes(bundle.model, bundle.manifest, DEFAULT_OPSET, None)
                return OnnxPredictor.from_bytes(data, bundle.manifest, folder, **kw)
            return OnnxPredictor.from_bundle(path, **kw)
        if backend != "torch":
            raise ValueError(f"unknown backend {backend!r}; valid: torch, onnx")
        return cls(load_bundle(path), **kw)

    def run_full(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """PyTorch: (raw outputs, pooled penultimate features) from one pass (features None when the task has none)."""
        if self.feature_head is None:
            return self.run(x, meta), None
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            mt = None if meta is None else torch.from_numpy(meta.astype(np.float32)).to(self.device)
            out, feats = self.feature_head(xt, mt)
            return out.float().cpu().numpy(), feats.float().cpu().numpy()

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """PyTorch: preprocessed batch (N, C, H, W) -> the task head's raw outputs (N, K)."""
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(self.device)
            mt = None if meta is None else torch.from_numpy(meta.astype(np.float32)).to(self.device)
            return self.head(xt, mt).float().cpu().numpy()
