"""Inference from a bundle: :class:`Predictor` (PyTorch) and :class:`OnnxPredictor` (ONNX Runtime).

Both ask the bundle's task for its head, scores and decisions; neither tests a task name.
"""

from __future__ import annotations

from medlens.inference.base import BasePredictor, ImageInput, decode_input
from medlens.inference.predictor import Predictor, predict, write_predictions_csv
from medlens.tasks import Prediction


def __getattr__(name: str):
    if name == "OnnxPredictor":  # ONNX Runtime is an optional extra: imported on first use
        from medlens.inference.onnx import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(f"module 'medlens.inference' has no attribute {name!r}")


__all__ = ["BasePredictor", "ImageInput", "OnnxPredictor", "Prediction", "Predictor", "decode_input", "predict", "write_predictions_csv"]
