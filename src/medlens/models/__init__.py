"""Networks as plain ``nn.Module``s, built by name from a manifest's ``architecture`` dict.

``create_model(arch)`` dispatches on ``arch["type"]`` (``classifier``, ``fusion``, ``unet_ae``,
``reversed_ae``, ``patchcore``, ``ensemble``); ``list_models()`` names the types. Backbones are timm names (``timm.list_models()``).

Pretrained weights (``model.pretrained``, see :mod:`medlens.models.pretrained`): pass ``pretrained`` in the
architecture dict when building the model to train, then store what was loaded, not the request, so that
rebuilding the network from a bundle never downloads anything::

    check_pretrained_available(cfg.model.backbone, cfg.model.pretrained)  # before reading data: fails fast offline
    model = create_model({**arch, "pretrained": cfg.model.pretrained})
    arch["pretrained_weights"] = model.pretrained_info  # {"source", "revision", "sha256"} or None
    # ... Manifest(architecture=arch, ...): create_model(arch) ignores "pretrained_weights" (a record)
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from medlens.models.pretrained import PretrainedWeightsError, check_pretrained_available, resolve_pretrained
from medlens.registry import Registry

__all__ = [
    "MODELS", "PretrainedWeightsError", "check_pretrained_available", "create_model", "list_models", "resolve_pretrained",
]

MODELS: Registry = Registry("model type")

_MODULES = {
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


def create_model(arch: dict[str, Any]) -> nn.Module:
    """Build a network from an architecture dict (as stored in a bundle manifest).

    ``pretrained`` (classifier/fusion) loads pretrained backbone weights; ``pretrained_weights`` (the record of
    what was loaded, kept in a manifest) is ignored.

    Example:
        >>> m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28})
    """
    arch = dict(arch)
    arch.pop("pretrained_weights", None)  # provenance of the pretrained weights a bundle was trained from; not an argument
    kind = arch.pop("type", "classifier")
    if kind not in MODELS and kind in _MODULES:
        importlib.import_module(_MODULES[kind])
    return MODELS.create(kind, **arch)


def list_models() -> list[str]:
    return sorted(_MODULES)
