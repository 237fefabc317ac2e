"""Inference from a bundle: :class:`Predictor` (PyTorch) and :class:`OnnxPredictor` (ONNX Runtime).

Both ask the bundle's task for its head, scores and decisions; neither tests a task name. The runtimes are
imported on first use, so ``predict(..., backend="onnx")`` on an exported bundle never imports torch.
"""

from __future__ import annotations

from typing import Any

from medlens.inference.base import BasePredictor, ImageInput, decode_input
from medlens.inference.loading import load_predictor, predict, write_predictions_csv
from medlens.tasks import Prediction


def __getattr__(name: str) -> Any:
    if name == "Predictor":  # PyTorch
        from medlens.inference.predictor import Predictor

        return Predictor
    if name == "OnnxPredictor":  # ONNX Runtime (an optional extra)
        from medlens.inference.onnx import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(f"module 'medlens.inference' has no attribute {name!r}")


__all__ = ["BasePredictor", "ImageInput", "OnnxPredictor", "Prediction", "Predictor", "decode_input", "load_predictor", "predict",
           "write_predictions_csv"]
