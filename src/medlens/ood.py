"""The out-of-distribution gate: is this image like the images the model was trained on?

At the end of training a detector is fitted on the penultimate features (the pooled backbone output the head
reads) of the training images; its threshold lets ``ood.val_pass`` (95 %) of the validation images through. At
inference each image gets an ``ood_score`` and ``ood`` (score above the threshold): the decision is still shown,
marked as not reliable. Two detectors, both from the OpenOOD benchmark's feature-based family:

* ``mahalanobis`` (default): the Mahalanobis distance to the training features' mean under their (shrunk)
  covariance (Lee et al., NeurIPS 2018, class-agnostic form); measured the better of the two on chest X-ray models
  against dermoscopy, ultrasound and adult chest X-rays (benchmarks/ood.py).
* ``knn``: the distance to the k-th nearest training feature after L2 normalisation (Sun et al., ICML 2022,
  "Out-of-distribution detection with deep nearest neighbors"); no distribution assumed.

The detector is numpy only, so the torch and the ONNX predictor share it (ONNX exports the features as a second
output). Its arrays live in the bundle as ``ood.safetensors`` (SHA-256 in the manifest's ``ood`` record).

Example:
    >>> rng = np.random.default_rng(0)
    >>> like = lambda n, axis: rng.normal(size=(n, 8)) + 10 * np.eye(8)[axis]  # features around one direction
    >>> det = fit_detector(like(200, 0), like(50, 0), method="knn", k=5)
    >>> bool(det.flag(like(1, 0))[0]), bool(det.flag(like(1, 3))[0])
    (False, True)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OOD_FILE = "ood.safetensors"
METHODS = ("knn", "mahalanobis")
#: the most features a gate may hold (kNN bank rows, feature width): bounds bundle size and memory
MAX_BANK, MAX_DIM = 20000, 8192


class OodError(ValueError):
    """An OOD record or file is missing, tampered with or out of bounds."""


def _normalise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


@dataclass
class OodDetector:
    """A fitted gate: ``score(features)`` (higher: less like the training images) and ``flag`` above ``threshold``."""

    method: str
    threshold: float
    arrays: dict[str, np.ndarray]
    k: int = 10
    record: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2:
            raise OodError(f"features must be (N, D), got shape {f.shape}")
        if self.method == "knn":
            bank = self.arrays["bank"].astype(np.float32)
            if f.shape[1] != bank.shape[1]:
                raise OodError(f"features of width {f.shape[1]} for a gate fitted on width {bank.shape[1]}")
            sims = _normalise(f) @ bank.T  # cosine similarity to every training image
            k = min(self.k, bank.shape[0])
            kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
            return (1.0 - kth).astype(np.float64)  # cosine distance to the k-th nearest training image
        mean, prec = self.arrays["mean"], self.arrays["precision"]
        if f.shape[1] != mean.shape[0]:
            raise OodError(f"features of width {f.shape[1]} for a gate fitted on width {mean.shape[0]}")
        d = f.astype(np.float64) - mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, prec, d), 0.0))

    def flag(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write ``ood.safetensors`` into ``folder``; returns the manifest record (method, threshold, sha256, ...)."""
        from safetensors.numpy import save_file

        path = Path(folder) / OOD_FILE
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(path))
        return {**self.record, "method": self.method, "k": self.k, "threshold": float(self.threshold), "file": OOD_FILE,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}

    @classmethod
    def load(cls, folder: str | Path, record: dict[str, Any]) -> OodDetector:
        """Read a gate from a bundle folder and its manifest record (checksum and bounds checked first)."""
        from safetensors.numpy import load_file

        if not isinstance(record, dict) or record.get("method") not in METHODS:
            raise OodError(f"manifest field 'ood': unknown method {record.get('method') if isinstance(record, dict) else record!r}")
        thr = record.get("threshold")
        if not isinstance(thr, (int, float)) or isinstance(thr, bool) or not np.isfinite(thr):
            raise OodError(f"manifest field 'ood.threshold': {thr!r} is not a finite number")
        k = record.get("k", 10)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
            raise OodError(f"manifest field 'ood.k': {k!r} is not an integer in 1..1000")
        path = Path(folder) / OOD_FILE
        if not path.is_file():
            raise OodError(f"{path}: missing (the manifest records an out-of-distribution gate)")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise OodError(f"{path}: checksum does not match the manifest (file modified or corrupt)")
        arrays = load_file(str(path))
        for name, a in arrays.items():
            if a.ndim > 2 or (a.ndim == 2 and (a.shape[0] > MAX_BANK or a.shape[1] > MAX_DIM)) or not np.isfinite(a).all():
                raise OodError(f"{path}: array {name!r} of shape {a.shape} is out of bounds or not finite")
        need = ("bank",) if record["method"] == "knn" else ("mean", "precision")
        if any(n not in arrays for n in need):
            raise OodError(f"{path}: needs arrays {list(need)}, has {sorted(arrays)}")
        return cls(record["method"], float(thr), dict(arrays), int(k), dict(record))


def fit_detector(train_features: np.ndarray, val_features: np.ndarray, method: str = "mahalanobis", k: int = 10,
                 val_pass: float = 0.95, max_bank: int = 4096, seed: int = 0) -> OodDetector:
    """Fit a gate on training features; its threshold passes ``val_pass`` of the validation features.

    Args:
        train_features: (N, D) penultimate features of training images.
        val_features: (M, D) of validation images (the threshold is their ``val_pass`` quantile).
        method: ``knn`` or ``mahalanobis``.
        k: the neighbour whose distance is the score (``knn``).
        val_pass: the share of validation images let through (0.95: 5 % of in-distribution images are flagged).
        max_bank: the most training images a ``knn`` bank keeps (a seeded random subset beyond).
        seed: the subset's seed.
    """
    if method not in METHODS:
        raise ValueError(f"ood.method {method!r}; valid: {', '.join(METHODS)}")
    tr = np.asarray(train_features, dtype=np.float32)
    va = np.asarray(val_features, dtype=np.float32)
    if tr.ndim != 2 or len(tr) < 2 or va.ndim != 2 or len(va) < 2:
        raise ValueError(f"the OOD gate needs at least 2 training and 2 validation images (got {len(tr)} and {len(va)})")
    if not (np.isfinite(tr).all() and np.isfinite(va).all()):
        raise ValueError("the OOD gate's features are not finite")
    if method == "knn":
        if len(tr) > max_bank:
            tr = tr[np.sort(np.random.default_rng(seed).choice(len(tr), max_bank, replace=False))]
        arrays = {"bank": _normalise(tr).astype(np.float16)}
    else:
        mean = tr.mean(axis=0).astype(np.float64)
        cov = np.cov(tr.astype(np.float64), rowvar=False)
        cov = np.atleast_2d(cov)
        shrink = 1e-3 * float(np.trace(cov)) / cov.shape[0] + 1e-8  # a few images, many dimensions: keep it invertible
        arrays = {"mean": mean, "precision": np.linalg.pinv(cov + shrink * np.eye(cov.shape[0]))}
    det = OodDetector(method, float("inf"), arrays, int(k))
    scores = det.score(va)
    det.threshold = float(np.quantile(scores, val_pass, method="higher"))
    det.record = {"val_pass": float(val_pass), "val_pass_rate": float(np.mean(scores <= det.threshold)), "n_train": int(len(train_features)),
                  "n_bank": int(len(tr)), "n_val": int(len(va)), "feature_dim": int(tr.shape[1])}
    return det


def ood_notice(score: float, threshold: float) -> str:
    """The words every surface shows for a flagged image."""
    return (f"outside the training distribution: score {score:.3g} above {threshold:.3g}; "
            "the finding below is not reliable")
