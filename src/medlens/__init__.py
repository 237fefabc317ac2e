"""medlens: train, evaluate, explain and serve medical image classifiers.

Public API (imported lazily so ``import medlens`` and ``medlens --help`` stay fast)::

    from medlens import load_config, train, evaluate, predict, load_bundle, Predictor

Example:
    >>> import medlens
    >>> cfg = medlens.load_config("configs/pneumoniamnist.yaml")  # doctest: +SKIP
    >>> result = medlens.train(cfg)  # doctest: +SKIP
    >>> medlens.predict(result.bundle_dir, ["chest.png"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "medlens.config",
    "load_config": "medlens.config",
    "config_from_dict": "medlens.config",
    "ConfigError": "medlens.config",
    "train": "medlens.training",
    "pretrain": "medlens.pretrain",
    "PretrainResult": "medlens.pretrain",
    "RunResult": "medlens.training",
    "evaluate": "medlens.evaluation",
    "EvalResult": "medlens.evaluation",
    "predict": "medlens.inference",
    "Predictor": "medlens.inference",
    "Prediction": "medlens.inference",
    "explain": "medlens.interpret",
    "Explanation": "medlens.interpret",
    "export_onnx": "medlens.export",
    "OnnxPredictor": "medlens.inference.onnx",
    "load_bundle": "medlens.bundle",
    "save_bundle": "medlens.bundle",
    "Bundle": "medlens.bundle",
    "Manifest": "medlens.bundle",
    "LabelSpace": "medlens.data.labels",
    "Sample": "medlens.data.samples",
    "SampleTable": "medlens.data.samples",
    "read_dataset": "medlens.data.readers",
    "MetadataEncoder": "medlens.data.metadata",
    "list_readers": "medlens.data.readers",
    "split_indices": "medlens.data.splits",
    "kfold_indices": "medlens.data.splits",
    "create_model": "medlens.models",
    "list_models": "medlens.models",
    "create_loss": "medlens.tasks.classification.losses",
    "list_losses": "medlens.tasks.classification.losses",
    "get_task": "medlens.tasks",
    "list_tasks": "medlens.tasks",
    "Task": "medlens.tasks",
    "run_demo": "medlens.demo",
    "TrainingInterrupted": "medlens.engine.signals",
    "OodDetector": "medlens.ood",
    "classification_metrics": "medlens.tasks.classification.metrics",
    "bootstrap_ci": "medlens.tasks.classification.uncertainty",
    "build_report": "medlens.report",
    "cross_validate": "medlens.cv",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
