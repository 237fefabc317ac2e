"""Networks as plain ``nn.Module``s, built by name from a manifest's ``architecture`` dict.

``create_model(arch)`` dispatches on ``arch["type"]`` (``classifier``, ``fusion``, ``unet_ae``,
``reversed_ae``); ``list_models()`` names the types. Backbones are timm names (``timm.list_models()``).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from medlens.registry import Registry

MODELS: Registry = Registry("model type")

_MODULES = {
    "classifier": "medlens.models.classifier",
    "fusion": "medlens.models.fusion",
    "unet_ae": "medlens.models.autoencoder",
    "reversed_ae": "medlens.models.autoencoder",
}


@MODELS.register("classifier")
def _make_classifier(**kw: Any) -> nn.Module:
    from medlens.models.classifier import ImageClassifier

    return ImageClassifier(**kw)


def create_model(arch: dict[str, Any]) -> nn.Module:
    """Build a network from an architecture dict (as stored in a bundle manifest).

    Example:
        >>> m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28})
    """
    arch = dict(arch)
    kind = arch.pop("type", "classifier")
    if kind not in MODELS and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    return MODELS.create(kind, **arch)


def list_models() -> list[str]:
    return sorted(_MODULES)
