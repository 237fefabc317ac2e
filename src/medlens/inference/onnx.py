"""Prediction on ONNX Runtime behind the same :class:`~medlens.inference.Predictor` API.

The exported graph is the task's inference head (logits for classifiers, the anomaly score for autoencoders),
so preprocessing, temperature, thresholds and decisions are exactly the torch predictor's. Loading checks the
file's SHA-256 against the manifest before ONNX Runtime sees the bytes; ONNX files are protobuf, never pickles.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medlens.bundle import MANIFEST, WEIGHTS, BundleError, Manifest, load_bundle, read_manifest
from medlens.inference.base import BasePredictor

log = logging.getLogger("medlens.predict")

ONNX_FILE = "model.onnx"
#: the largest model.onnx read: protobuf's 2 GiB message limit (a larger file cannot be a valid single-file model)
MAX_ONNX_BYTES = 2**31


def onnx_session(data: bytes, providers: list[str] | None = None, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    avail = ort.get_available_providers()
    provs = [p for p in (providers or ["CPUExecutionProvider"]) if p in avail] or ["CPUExecutionProvider"]
    return ort.InferenceSession(data, sess_options=so, providers=provs)


class OnnxPredictor(BasePredictor):
    """:class:`~medlens.inference.Predictor` on ONNX Runtime: same inputs, preprocessing, temperature, thresholds.

    Args:
        manifest: the bundle manifest (labels, preprocessing, thresholds, temperature, metadata encoder).
        session: an ``onnxruntime.InferenceSession``.
        path: the folder it came from (explanations load the PyTorch weights from here when present).
        batch_size: images per run.
        tta: average over the image and its horizontal flip.
        calibrated: apply the manifest's temperature.

    Example:
        >>> p = OnnxPredictor.from_bundle("runs/pneumoniamnist/bundle")  # doctest: +SKIP
        >>> p.predict(["chest.png"])[0].decisions  # doctest: +SKIP
        {'pneumonia': True}
    """

    backend = "onnx"

    def __init__(self, manifest: Manifest, session: Any, path: Path | None = None, batch_size: int = 64, tta: bool = False, calibrated: bool = True, device: str = "cpu") -> None:
        self.bundle = None  # no PyTorch network here; see :attr:`model`
        self.manifest = manifest
        self.path = path
        self.batch_size = batch_size
        self.tta = tta
        self.calibrated = calibrated
        self.device = "cpu"
        self.session = session
        self._input_names = [i.name for i in session.get_inputs()]
        self._output_names = [o.name for o in session.get_outputs()]
        self._torch_model: Any = None
        self.init_common()

    @classmethod
    def from_bundle(cls, path: str | Path, batch_size: int = 64, tta: bool = False, calibrated: bool = True, device: str = "cpu", providers: list[str] | None = None, threads: int | None = None, verify: bool = True) -> OnnxPredictor:
        """Load ``model.onnx`` + ``manifest.json`` from a folder (or the ``.onnx`` file's folder).

        A bundle never exported gets an in-memory export (slower start; run ``medlens export`` once instead).
        With ``verify`` the file's SHA-256 must match the manifest's record.
        """
        p = Path(path)
        folder = p.parent if p.suffix == ".onnx" else p
        if not folder.is_dir():
            raise BundleError(f"{folder}: bundle folder not found")
        manifest = read_manifest(folder)
        onnx_path = p if p.suffix == ".onnx" else folder / ONNX_FILE
        if onnx_path.is_file():
            rec = (manifest.extra or {}).get("onnx") or {}
            size = onnx_path.stat().st_size  # bounded before a byte is read: the file is read whole into memory
            if size > MAX_ONNX_BYTES:
                raise BundleError(f"{onnx_path}: {size:,} bytes, more than an ONNX model file can hold ({MAX_ONNX_BYTES:,})")
            if verify and isinstance(rec.get("bytes"), int) and size != rec["bytes"]:
                raise BundleError(f"{onnx_path}: {size:,} bytes, but the manifest records {rec['bytes']:,} (file modified or corrupt)")
            data = onnx_path.read_bytes()
            if verify:
                if not rec.get("sha256"):
                    raise BundleError(f"{onnx_path}: not recorded in {folder / MANIFEST}; re-run `medlens export {folder}`")
                if hashlib.sha256(data).hexdigest() != rec["sha256"]:
                    raise BundleError(f"{onnx_path}: checksum does not match the manifest (file modified or corrupt)")
        else:
            if (folder / WEIGHTS).is_file():
                raise BundleError(f"{folder}: no {ONNX_FILE}; run `medlens export {folder}` first")
            raise BundleError(f"{folder}: neither {ONNX_FILE} nor {WEIGHTS} found")
        return cls.from_bytes(data, manifest, folder, batch_size=batch_size, tta=tta, calibrated=calibrated, device=device, providers=providers, threads=threads)

    @classmethod
    def from_bytes(cls, data: bytes, manifest: Manifest, folder: Path | None = None, batch_size: int = 64, tta: bool = False, calibrated: bool = True,
                   device: str = "cpu", providers: list[str] | None = None, threads: int | None = None) -> OnnxPredictor:
        """A predictor over an in-memory ONNX model and its manifest."""
        if device.startswith("cuda") and providers is None:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            session = onnx_session(data, providers, threads)
        except Exception as e:  # onnxruntime raises its own exception types for invalid models
            raise BundleError(f"{folder}: ONNX Runtime cannot load the model ({type(e).__name__}: {str(e)[:300]})") from None
        return cls(manifest, session, folder, batch_size=batch_size, tta=tta, calibrated=calibrated)

    @property
    def model(self) -> Any:
        """The PyTorch network (for explanations), loaded lazily from the bundle's ``model.safetensors``."""
        if self._torch_model is None:
            if self.path is None or not (Path(self.path) / WEIGHTS).is_file():
                raise ValueError(f"{self.path}: explanations need the PyTorch weights ({WEIGHTS}); this folder has only the ONNX model")
            self._torch_model = load_bundle(self.path).model  # imports torch: explanations only
        return self._torch_model

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        """ONNX Runtime: preprocessed batch -> the exported task head's outputs (logits, or anomaly scores)."""
        return self.run_full(x, meta)[0]

    def run_full(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """ONNX Runtime: (raw outputs, the exported ``features`` output when the graph has one)."""
        feeds: dict[str, np.ndarray] = {"image": np.ascontiguousarray(x, dtype=np.float32)}
        if "metadata" in self._input_names:
            if meta is None:
                raise ValueError("this model needs metadata: pass one dict per image (missing fields allowed)")
            feeds["metadata"] = np.ascontiguousarray(meta, dtype=np.float32)
        outs = dict(zip(self._output_names, self.session.run(None, feeds), strict=True))
        feats = outs.get("features")
        return np.asarray(outs[self._output_names[0]], dtype=np.float32), (None if feats is None else np.asarray(feats, dtype=np.float32))

    def run_map(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """ONNX Runtime: (raw outputs, the task's per-pixel map (N, 1, H, W)) of a preprocessed batch, or None when
        the graph has no map output (older exports, tasks without a map)."""
        name = self.task.map_output
        if not name or name not in self._output_names:
            return None
        outs = dict(zip(self._output_names, self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)}), strict=True))
        return np.asarray(outs[self._output_names[0]], dtype=np.float32), np.asarray(outs[name], dtype=np.float32)
