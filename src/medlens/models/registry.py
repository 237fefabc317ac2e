"""The model-type registry: architecture ``type`` -> factory, and building a network from a checked dict.

Model modules register themselves here (``@MODELS.register("unet_ae")``); :func:`medlens.models.create_model`
checks the bounds first (:mod:`medlens.models.bounds`), then calls :func:`build_model`.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from medlens.registry import Registry

MODELS: Registry = Registry("model type")

MODULES = {
    "classifier": "medlens.models.classifier",
    "fusion": "medlens.models.fusion",
    "unet_ae": "medlens.models.autoencoder",
    "reversed_ae": "medlens.models.autoencoder",
    "patchcore": "medlens.models.patchcore",
    "ensemble": "medlens.models.ensemble",
}


@MODELS.register("classifier")
def _make_classifier(**kw: Any) -> nn.Module:
    from medlens.models.classifier import ImageClassifier

    return ImageClassifier(**kw)


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Build the network of an architecture dict already held against the bounds (no check here)."""
    arch = dict(arch)
    arch.pop("pretrained_weights", None)  # provenance of the pretrained weights a bundle was trained from; not an argument
    kind = arch.pop("type", "classifier")
    if kind not in MODELS and kind in MODULES:
        importlib.import_module(MODULES[kind])
    return MODELS.create(kind, **arch)


def list_models() -> list[str]:
    """The architecture types a dict may name."""
    return sorted(MODULES)
