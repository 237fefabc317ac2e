"""Bounds on an architecture dict, checked before any network is built or any weight allocated.

A bundle's ``manifest.json`` says what network to build. A 2 KB manifest can ask for 64 ``vit_huge`` members
(12 GB) or ``in_chans: 1e7`` (a 125 GB first convolution); :func:`check_architecture` refuses both in
milliseconds with one line naming the field:

* the ``type`` is a registered model type, and every key is an argument of that type's constructor (or a record
  such as ``pretrained_weights``); an unknown key is named with the valid ones;
* counts and sizes are integers in range (``in_chans`` 1 or 3 like ``data.channels``, ``image_size`` 8-4096 like
  ``data.image_size``, outputs, widths, depths, members, metadata sizes), rates are finite and in [0, 1);
* the backbone is a timm model;
* the network's size is counted on PyTorch's ``meta`` device (shapes only, no memory), ensemble members once per
  distinct architecture, and must stay within :data:`MAX_ELEMENTS` parameters and buffers (4 GB in float32);
* a weights file may then be at most 8 bytes per counted element (float64) plus its header: a small
  architecture cannot come with a 12 GB ``model.safetensors``.

:func:`model_from_manifest` is how a bundle's network is built: checked, and with any ``pretrained`` request
dropped at every level (ensemble members too), so loading a bundle never reaches for the hub: its weights come
from ``model.safetensors`` only.

Example:
    >>> check_architecture({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32}) > 0
    True
    >>> check_architecture({"type": "classifier", "backbone": "resnet10t", "in_chans": 1e7})
    Traceback (most recent call last):
    ...
    medlens.models.bounds.ArchitectureError: architecture.in_chans: expected an integer, got 10000000.0
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

#: most parameters + buffers a network may have: 1e9 elements, 4 GB in float32 (a single ViT-Huge has 0.63e9;
#: an ensemble of ten ConvNeXt-Base 0.89e9)
MAX_ELEMENTS = 1_000_000_000
#: bytes a weights file may hold per counted element (float64 at most) plus this much header
HEADER_SLACK_BYTES = 1 << 20

#: fields every architecture may carry besides the constructor's arguments (records, not arguments)
RECORD_FIELDS = ("type", "pretrained_weights")
#: the shared fields an ensemble keeps at its top for people and tools (see medlens.ensemble.DISPLAY_FIELDS)
ENSEMBLE_DISPLAY = ("backbone", "image_size", "in_chans", "meta_dim", "num_outputs")

#: integer fields and their inclusive ranges
INT_RANGES: dict[str, tuple[int, int]] = {
    "in_chans": (1, 3),
    "image_size": (8, 4096),
    "num_outputs": (1, 100_000),
    "meta_dim": (1, 100_000),
    "depth": (1, 12),
    "width": (1, 4096),
    "latent_dim": (1, 1_000_000),
    "encoder_convs": (1, 16),
    "memory_size": (1, 10_000_000),
}
#: float fields that are rates in [0, 1)
RATES = ("drop_rate", "drop_path_rate", "meta_dropout")
#: integer-list fields: (most entries, inclusive range of each)
INT_LISTS: dict[str, tuple[int, tuple[int, int]]] = {
    "meta_hidden": (16, (1, 65_536)),
    "meta_cardinalities": (10_000, (1, 10_000_000)),
    "skip_levels": (12, (0, 11)),
    "patch_layers": (8, (0, 7)),
}
MAX_MEMBERS = 64


class ArchitectureError(ValueError):
    """An architecture dict is malformed, out of bounds or too large; the message is one line naming the field."""


def _fail(where: str, msg: str) -> ArchitectureError:
    return ArchitectureError(f"{where}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _classes(kind: str) -> list[type]:
    """The class(es) whose constructor arguments an architecture of ``kind`` may set."""
    from medlens.models.classifier import ImageClassifier

    if kind == "fusion":
        from medlens.models.fusion import FusionClassifier

        return [FusionClassifier, ImageClassifier]  # FusionClassifier passes **image_kw on
    if kind == "unet_ae":
        from medlens.models.autoencoder import UNetAutoencoder

        return [UNetAutoencoder]
    if kind == "reversed_ae":
        from medlens.models.autoencoder import ReversedAutoencoder

        return [ReversedAutoencoder]
    if kind == "patchcore":
        from medlens.models.patchcore import PatchCoreDetector

        return [PatchCoreDetector]
    if kind == "ensemble":
        from medlens.models.ensemble import EnsembleNet

        return [EnsembleNet]
    return [ImageClassifier]


@functools.lru_cache(maxsize=16)
def constructor_fields(kind: str) -> frozenset[str]:
    """Keys an architecture dict of model type ``kind`` may set: its constructor's named arguments.

    Example:
        >>> sorted(constructor_fields("classifier"))[:3]
        ['backbone', 'drop_path_rate', 'drop_rate']
    """
    names: set[str] = set()
    for cls in _classes(kind):
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                names.add(p.name)
    if kind == "ensemble":
        names.update(ENSEMBLE_DISPLAY)
    return frozenset(names)


def _check_fields(arch: Any, where: str, depth: int = 0) -> None:
    from medlens.models.registry import list_models

    if not isinstance(arch, dict):
        raise _fail(where, f"expected an object, got {type(arch).__name__}")
    kind = arch.get("type", "classifier")
    if not isinstance(kind, str) or kind not in list_models():
        raise _fail(f"{where}.type", f"unknown model type {kind!r}; valid: {', '.join(list_models())}")
    allowed = constructor_fields(kind) | set(RECORD_FIELDS)
    unknown = sorted(str(k) for k in arch if k not in allowed)
    if unknown:
        article = "an" if kind[0] in "aeiou" else "a"
        raise _fail(where, f"unknown key {unknown[0]!r} for {article} {kind} network; valid: {', '.join(sorted(allowed))}")
    for key, (lo, hi) in INT_RANGES.items():
        if key in arch:
            v = arch[key]
            if not _is_int(v):
                raise _fail(f"{where}.{key}", f"expected an integer, got {v!r}"[:200])
            if not lo <= v <= hi:
                raise _fail(f"{where}.{key}", f"{v} is outside {lo}..{hi}")
    for key in RATES:
        if key in arch:
            v = arch[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < 1:
                raise _fail(f"{where}.{key}", f"expected a rate in [0, 1), got {v!r}"[:200])
    for key, (most, (lo, hi)) in INT_LISTS.items():
        if key in arch and arch[key] is not None:
            v = arch[key]
            if not isinstance(v, list) or len(v) > most or not all(_is_int(x) and lo <= x <= hi for x in v):
                raise _fail(f"{where}.{key}", f"expected a list of at most {most} integers in {lo}..{hi}, got {str(v)[:80]}")
    if "meta_missing" in arch and arch["meta_missing"] is not None:
        v = arch["meta_missing"]
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise _fail(f"{where}.meta_missing", "expected a list of finite numbers")
        if _is_int(arch.get("meta_dim")) and len(v) != arch["meta_dim"]:
            raise _fail(f"{where}.meta_missing", f"{len(v)} values, but meta_dim is {arch['meta_dim']}")
    if "patch_position" in arch:
        v = arch["patch_position"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
            raise _fail(f"{where}.patch_position", f"expected a number in 0..100, got {v!r}"[:200])
    if "small_input" in arch:
        v = arch["small_input"]
        if not (isinstance(v, bool) or v == "auto" or (_is_int(v) and v in (1, 2, 4))):
            raise _fail(f"{where}.small_input", f"expected auto, true, false, 1, 2 or 4, got {v!r}"[:200])
    if "backbone" in arch and kind != "ensemble":
        import timm

        b = arch["backbone"]
        if not isinstance(b, str) or not timm.is_model(b):
            raise _fail(f"{where}.backbone", f"{str(b)[:80]!r} is not a timm model")
    if "pretrained" in arch and not isinstance(arch["pretrained"], (bool, str)):
        raise _fail(f"{where}.pretrained", f"expected true/false, a hub id or a file, got {arch['pretrained']!r}"[:200])
    if kind == "ensemble":
        if depth > 0:
            raise _fail(where, "an ensemble member cannot itself be an ensemble")
        members = arch.get("members")
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_MEMBERS:
            n = len(members) if isinstance(members, list) else members
            raise _fail(f"{where}.members", f"an ensemble has 1 to {MAX_MEMBERS} members, not {str(n)[:40]}")
        for i, m in enumerate(members):
            if not isinstance(m, dict) or m.get("type", "classifier") not in ("classifier", "fusion"):
                raise _fail(f"{where}.members[{i}]", "a member is a classifier or fusion network")
            _check_fields(m, f"{where}.members[{i}]", depth + 1)


def without_pretrained(arch: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``arch`` with ``pretrained`` removed at every level (ensemble members too).

    Example:
        >>> without_pretrained({"type": "ensemble", "pretrained": True, "members": [{"pretrained": "timm/x"}]})
        {'type': 'ensemble', 'members': [{}]}
    """
    out = {k: v for k, v in arch.items() if k != "pretrained"}
    if isinstance(out.get("members"), list):
        out["members"] = [without_pretrained(m) if isinstance(m, dict) else m for m in out["members"]]
    return out


@functools.lru_cache(maxsize=64)
def _elements_of(key: str) -> int:
    """Parameters + buffers of the (non-ensemble) network ``key`` (its JSON), counted on the meta device."""
    import torch

    from medlens.models.registry import build_model

    with torch.device("meta"):
        model = build_model(json.loads(key))
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    if hasattr(model, "memory_size") and hasattr(model, "feature_dim"):  # a feature detector's bank (data-sized)
        n += int(model.memory_size) * int(model.feature_dim)
    return int(n)


def count_elements(arch: dict[str, Any]) -> int:
    """Parameters + buffers the network of ``arch`` will hold, without allocating it (``arch`` already checked)."""
    arch = without_pretrained(arch)
    if arch.get("type") == "ensemble":
        return sum(count_elements(m) for m in arch["members"]) + len(arch["members"]) * int(arch.get("num_outputs", 1))
    return _elements_of(json.dumps(arch, sort_keys=True))


def check_architecture(arch: Any, where: str = "architecture", max_elements: int = MAX_ELEMENTS,
                       weights_bytes: int | None = None) -> int:
    """Check an architecture dict against the bounds above, before any network is built.

    Args:
        arch: the dict (as in a bundle manifest, or as a task builds it).
        where: the name of the dict in messages (``architecture``, or a manifest path + field).
        max_elements: the most parameters + buffers allowed.
        weights_bytes: the size of the weights file that goes with it, if any.

    Returns:
        The number of parameters + buffers the network will hold.

    Raises:
        ArchitectureError: one line naming the field (``architecture.members[3].in_chans``) and the bound.
    """
    _check_fields(arch, where)
    try:
        n = count_elements(arch)
    except ArchitectureError:
        raise
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError, NotImplementedError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise _fail(where, f"cannot be built ({type(e).__name__}: {first})") from None
    if n > max_elements:
        raise _fail(where, f"{n:,} parameters and buffers, more than the {max_elements:,} a medlens network may hold "
                           f"({n * 4 / 2**30:.1f} GB in float32)")
    if weights_bytes is not None and weights_bytes > 8 * n + HEADER_SLACK_BYTES:
        raise _fail(where, f"the weights file has {weights_bytes:,} bytes, more than {n:,} weights can fill "
                           f"(at most {8 * n + HEADER_SLACK_BYTES:,} bytes)")
    return n


def model_from_manifest(arch: dict[str, Any], where: str = "architecture", weights_bytes: int | None = None) -> nn.Module:
    """Build a bundle's network from its manifest's architecture: bounds first, never pretrained weights.

    Any ``pretrained`` request in the dict (at any level) is dropped: a bundle's weights come from its
    ``model.safetensors``, so loading one never downloads anything.

    Example:
        >>> m = model_from_manifest({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1,
        ...                          "image_size": 32, "pretrained": True})  # no hub access
    """
    from medlens.models.registry import build_model

    check_architecture(arch, where, weights_bytes=weights_bytes)
    return build_model(without_pretrained(arch))
