"""Networks as plain ``nn.Module``s, built by name from a manifest's ``architecture`` dict.

``create_model(arch)`` dispatches on ``arch["type"]`` (``classifier``, ``fusion``, ``unet_ae``,
``reversed_ae``, ``patchcore``, ``ensemble``); ``list_models()`` names the types. Backbones are timm names (``timm.list_models()``).

Pretrained weights (``model.pretrained``, see :mod:`medlens.models.pretrained`): pass ``pretrained`` in the
architecture dict when building the model to train, then store what was loaded, not the request, so that
rebuilding the network from a bundle never downloads anything (:func:`model_from_manifest` drops any
``pretrained`` a manifest carries)::

    check_pretrained_available(cfg.model.backbone, cfg.model.pretrained)  # before reading data: fails fast offline
    model = create_model({**arch, "pretrained": cfg.model.pretrained})
    arch["pretrained_weights"] = model.pretrained_info  # {"source", "revision", "sha256"} or None
    # ... Manifest(architecture=arch, ...): create_model(arch) ignores "pretrained_weights" (a record)

Every architecture dict is checked against bounds before anything is built (:mod:`medlens.models.bounds`):
known type and keys, sizes in range, and a parameter count (counted on the meta device) within reach.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from medlens.models.bounds import ArchitectureError, check_architecture, model_from_manifest
from medlens.models.pretrained import PretrainedWeightsError, check_pretrained_available, resolve_pretrained
from medlens.models.registry import MODELS, build_model, list_models

__all__ = [
    "MODELS", "ArchitectureError", "PretrainedWeightsError", "check_architecture", "check_pretrained_available", "create_model",
    "list_models", "model_from_manifest", "resolve_pretrained",
]

def create_model(arch: dict[str, Any], check: bool = True) -> nn.Module:
    """Build a network from an architecture dict (as a task builds it; a bundle's: :func:`model_from_manifest`).

    ``pretrained`` (classifier/fusion) loads pretrained backbone weights; ``pretrained_weights`` (the record of
    what was loaded, kept in a manifest) is ignored. With ``check`` the dict is first held against the bounds of
    :func:`~medlens.models.bounds.check_architecture` (nothing is allocated for an out-of-bounds dict).

    Raises:
        ArchitectureError: an unknown type or key, a size out of range, or a network too large.

    Example:
        >>> m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28})
    """
    if check:
        check_architecture(arch)
    return build_model(arch)
