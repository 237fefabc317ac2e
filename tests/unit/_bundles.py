"""Bundles with randomly initialised weights, for predict/explain/export tests (no training needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medlens.bundle import Manifest, save_bundle
from medlens.data.labels import LabelSpace
from medlens.data.transforms import resolve_preprocessing
from medlens.models import create_model


def random_bundle(
    path: Path,
    backbone: str = "resnet10t",
    image_size: int = 32,
    channels: int = 1,
    task: str = "binary",
    names: Sequence[str] = ("normal", "abnormal"),
    thresholds: list[float] | None = None,
    temperature: float = 1.0,
    arch: dict[str, Any] | None = None,
    seed: int = 0,
    intended_use: str = "",
    **manifest_kw: Any,
) -> Path:
    """Save a bundle whose network is freshly initialised (``torch.manual_seed(seed)``)."""
    torch.manual_seed(seed)
    k = 1 if task in ("binary", "anomaly") else len(names)
    arch = arch or {"type": "classifier", "backbone": backbone, "num_outputs": k, "in_chans": channels, "image_size": image_size}
    model = create_model(arch).eval()
    if hasattr(model, "fill_memory"):  # a feature detector: its memory from random images' patches
        with torch.no_grad():
            model.fill_memory(model.patch_features(torch.randn(4, arch["in_chans"], arch["image_size"], arch["image_size"])))
    if thresholds is None:
        thresholds = [] if task == "multiclass" else [0.5] * k
    manifest = Manifest(
        architecture=arch, label_space=LabelSpace(tuple(names), task), preprocessing=resolve_preprocessing(image_size, channels),
        thresholds=thresholds, temperature=temperature, intended_use=intended_use, **manifest_kw,
    )
    return save_bundle(model, manifest, path)
