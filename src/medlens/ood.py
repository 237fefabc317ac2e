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

Features (``ood.features``): ``penultimate`` (the pooled vector the head reads) or ``stages`` (default): the channel
means and standard deviations of the stem's and each earlier stage's output followed by the pooled vector. With ``stages`` Mahalanobis fits one
Gaussian per segment and the score is the mean over segments of each distance standardised by its validation mean and
spread (the class-agnostic form of Lee et al.'s feature ensemble): early stages see intensity and texture (a
dermoscopy photo), the pooled vector content (an adult radiograph in a paediatric model); see benchmarks/ood.py.

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
FEATURES = ("penultimate", "stages")
#: the most features a gate may hold (kNN bank rows, feature width): bounds bundle size and memory
MAX_BANK, MAX_DIM = 20000, 8192


class OodError(ValueError):
    """An OOD record or file is missing, tampered with or out of bounds."""


def _normalise(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _split(f: np.ndarray, segments: list[int]) -> list[np.ndarray]:
    return np.split(f, np.cumsum(segments)[:-1], axis=1)


def _knn_prep(f: np.ndarray, segments: list[int]) -> np.ndarray:
    """Unit length per segment, then overall: each stage weighs the same in the cosine distance."""
    if len(segments) <= 1:
        return _normalise(f)
    return _normalise(np.concatenate([_normalise(x) for x in _split(f, segments)], axis=1))


def _gaussian(tr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (shrunk) precision of training features."""
    mean = tr.mean(axis=0).astype(np.float64)
    cov = np.atleast_2d(np.cov(tr.astype(np.float64), rowvar=False))
    shrink = 1e-3 * float(np.trace(cov)) / cov.shape[0] + 1e-8  # a few images, many dimensions: keep it invertible
    return mean, np.linalg.pinv(cov + shrink * np.eye(cov.shape[0]))


def _mahalanobis(f: np.ndarray, mean: np.ndarray, prec: np.ndarray) -> np.ndarray:
    d = f.astype(np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, prec, d), 0.0))


def ood_features(manifest: Any) -> str:
    """Which features a bundle's gate reads: its record's ``features``; before the gate is fitted (training), the
    run's ``ood.features``; ``penultimate`` for gates written before stage features existed."""
    rec = getattr(manifest, "ood", None)
    if isinstance(rec, dict):
        return str(rec.get("features", "penultimate"))
    cfg = getattr(manifest, "config", None) or {}
    return str((cfg.get("ood") or {}).get("features", "penultimate"))


@dataclass
class OodDetector:
    """A fitted gate: ``score(features)`` (higher: less like the training images) and ``flag`` above ``threshold``."""

    method: str
    threshold: float
    arrays: dict[str, np.ndarray]
    k: int = 10
    record: dict[str, Any] = field(default_factory=dict)
    #: widths of the feature segments (``stages``: each earlier stage, then the pooled vector); one segment: penultimate
    segments: list[int] = field(default_factory=list)

    @property
    def width(self) -> int:
        if self.method == "knn":
            return int(self.arrays["bank"].shape[1])
        return int(sum(self.segments)) if len(self.segments) > 1 else int(self.arrays["mean"].shape[0])

    def score(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2:
            raise OodError(f"features must be (N, D), got shape {f.shape}")
        if f.shape[1] != self.width:
            raise OodError(f"features of width {f.shape[1]} for a gate fitted on width {self.width}")
        if self.method == "knn":
            bank = self.arrays["bank"].astype(np.float32)
            sims = _knn_prep(f, self.segments) @ bank.T  # cosine similarity to every training image
            k = min(self.k, bank.shape[0])
            kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
            return (1.0 - kth).astype(np.float64)  # cosine distance to the k-th nearest training image
        if len(self.segments) <= 1:
            return _mahalanobis(f, self.arrays["mean"], self.arrays["precision"])
        z = self.arrays["zscale"]  # (L, 2): each segment's validation mean and spread of distances
        parts = [(_mahalanobis(x, self.arrays[f"mean_{i}"], self.arrays[f"precision_{i}"]) - z[i, 0]) / z[i, 1]
                 for i, x in enumerate(_split(f, self.segments))]
        return np.mean(parts, axis=0)

    def flag(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) > self.threshold

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write ``ood.safetensors`` into ``folder``; returns the manifest record (method, threshold, sha256, ...)."""
        from safetensors.numpy import save_file

        path = Path(folder) / OOD_FILE
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(path))
        return {**self.record, "method": self.method, "k": self.k, "threshold": float(self.threshold), "file": OOD_FILE,
                "features": "stages" if len(self.segments) > 1 else "penultimate", "segments": [int(x) for x in self.segments],
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
        feats = record.get("features", "penultimate")
        if feats not in FEATURES:
            raise OodError(f"manifest field 'ood.features': {feats!r}; valid: {', '.join(FEATURES)}")
        segs = record.get("segments") or []
        if (not isinstance(segs, list) or len(segs) > 64 or any(not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= MAX_DIM for x in segs)
                or (feats == "stages") != (len(segs) > 1)):
            raise OodError(f"manifest field 'ood.segments': {segs!r} does not fit features {feats!r}")
        if record["method"] == "knn":
            need = ["bank"]
        elif len(segs) > 1:
            need = [f"{a}_{i}" for i in range(len(segs)) for a in ("mean", "precision")] + ["zscale"]
        else:
            need = ["mean", "precision"]
        if any(n not in arrays for n in need):
            raise OodError(f"{path}: needs arrays {need}, has {sorted(arrays)}")
        shapes_ok = True
        if record["method"] == "knn":
            shapes_ok = len(segs) <= 1 or arrays["bank"].shape[1] == sum(segs)
        elif len(segs) > 1:
            shapes_ok = arrays["zscale"].shape == (len(segs), 2) and bool((arrays["zscale"][:, 1] > 0).all()) and all(
                arrays[f"mean_{i}"].shape == (w,) and arrays[f"precision_{i}"].shape == (w, w) for i, w in enumerate(segs))
        if not shapes_ok:
            raise OodError(f"{path}: array shapes do not match the manifest's ood.segments {segs}")
        return cls(record["method"], float(thr), dict(arrays), int(k), dict(record), [int(x) for x in segs])


def fit_detector(train_features: np.ndarray, val_features: np.ndarray, method: str = "mahalanobis", k: int = 10,
                 val_pass: float = 0.95, max_bank: int = 4096, seed: int = 0, segments: list[int] | None = None) -> OodDetector:
    """Fit a gate on training features; its threshold passes ``val_pass`` of the validation features.

    Args:
        train_features: (N, D) penultimate features of training images.
        val_features: (M, D) of validation images (the threshold is their ``val_pass`` quantile).
        method: ``knn`` or ``mahalanobis``.
        k: the neighbour whose distance is the score (``knn``).
        val_pass: the share of validation images let through (0.95: 5 % of in-distribution images are flagged).
        max_bank: the most training images a ``knn`` bank keeps (a seeded random subset beyond).
        seed: the subset's seed.
        segments: widths of the feature segments (stage features); None or one width: penultimate features.
    """
    if method not in METHODS:
        raise ValueError(f"ood.method {method!r}; valid: {', '.join(METHODS)}")
    tr = np.asarray(train_features, dtype=np.float32)
    va = np.asarray(val_features, dtype=np.float32)
    if tr.ndim != 2 or len(tr) < 2 or va.ndim != 2 or len(va) < 2:
        raise ValueError(f"the OOD gate needs at least 2 training and 2 validation images (got {len(tr)} and {len(va)})")
    if not (np.isfinite(tr).all() and np.isfinite(va).all()):
        raise ValueError("the OOD gate's features are not finite")
    segs = [int(x) for x in (segments or [])]
    if segs and (sum(segs) != tr.shape[1] or min(segs) < 1):
        raise ValueError(f"feature segments {segs} do not add up to the feature width {tr.shape[1]}")
    segs = segs if len(segs) > 1 else []
    if method == "knn":
        if len(tr) > max_bank:
            tr = tr[np.sort(np.random.default_rng(seed).choice(len(tr), max_bank, replace=False))]
        arrays = {"bank": _knn_prep(tr, segs).astype(np.float16)}
    elif not segs:
        mean, prec = _gaussian(tr)
        arrays = {"mean": mean, "precision": prec}
    else:  # one Gaussian per segment; distances standardised on validation so that every segment weighs the same
        arrays = {}
        zscale = np.zeros((len(segs), 2))
        for i, (xt, xv) in enumerate(zip(_split(tr, segs), _split(va, segs), strict=True)):
            arrays[f"mean_{i}"], arrays[f"precision_{i}"] = _gaussian(xt)
            d = _mahalanobis(xv, arrays[f"mean_{i}"], arrays[f"precision_{i}"])
            zscale[i] = (float(d.mean()), max(float(d.std()), 1e-6))
        arrays["zscale"] = zscale
    det = OodDetector(method, float("inf"), arrays, int(k), segments=segs)
    scores = det.score(va)
    det.threshold = float(np.quantile(scores, val_pass, method="higher"))
    det.record = {"val_pass": float(val_pass), "val_pass_rate": float(np.mean(scores <= det.threshold)), "n_train": int(len(train_features)),
                  "n_bank": int(len(tr)), "n_val": int(len(va)), "feature_dim": int(tr.shape[1])}
    return det


def ood_notice(score: float, threshold: float) -> str:
    """The words every surface shows for a flagged image."""
    return (f"outside the training distribution: score {score:.3g} above {threshold:.3g}; "
            "the finding below is not reliable")
