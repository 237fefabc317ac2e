"""Class-activation maps per label (pytorch-grad-cam) for classification bundles.

Methods (:func:`list_methods`): ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``, ``xgradcam`` and
``eigencam`` (EigenCAM is gradient-free and class-agnostic: every label gets the same map).

The target layer is chosen at the bundle's input size: the deepest stage of the backbone whose feature map is at
least :data:`MIN_MAP_SIDE` (7) cells a side -- ResNet-18 at 224 px: ``layer4`` (7x7); at 64 px with the small-input
stem: ``layer3`` (8x8) rather than ``layer4`` (4x4), whose heatmap would be a few blurred blocks. The stages are
known for the timm families the configs use (ResNet ``layer1-4``, EfficientNet ``blocks.*``/``bn2``, DenseNet
``denseblock*``/``norm5``, ConvNeXt ``stages.*``) and found by a generic search otherwise; the sizes come from one
forward pass with hooks. ``target_layer="backbone.layer3"`` picks one by name; a layer whose map is
:data:`COARSE_MAP_SIDE` (2x2) or smaller is explained with a warning, carried by each
:class:`~medlens.explanation.Explanation` (``warning``) so the CLI, API and page can show it.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medlens.explanation import Explanation, explanation_from_map
from medlens.registry import Registry
from medlens.tasks.base import Prediction, PredictorLike
from medlens.tasks.classification.cam_methods import CAM_CLASSES, CAPTIONS, list_methods  # noqa: F401  (CAPTIONS, list_methods: public here too)

log = logging.getLogger("medlens.explain")

CAM_METHODS: Registry = Registry("explanation method")

# Grad-CAM registers hooks on the network and writes gradients: one explanation at a time per process.
LOCK = threading.RLock()


def _cam_class(name: str) -> Callable[[], type]:
    def factory() -> type:
        import pytorch_grad_cam as pgc

        return getattr(pgc, name)

    return factory


for _name, _cls in CAM_CLASSES.items():
    CAM_METHODS.register(_name)(_cam_class(_cls))


# ---------------------------------------------------------------------------------------------- target layer
# (module path on the timm backbone that identifies the family, module to explain), checked in order.
_FAMILY_LAYERS: list[tuple[str, str]] = [
    ("layer4", "layer4"),  # ResNet, ResNet-D (resnet10t), ResNeXt, SE-ResNet: the last residual stage
    ("conv_head", "bn2"),  # EfficientNet / MobileNet: BN + activation after the final 1x1 conv
    ("features.norm5", "features.norm5"),  # DenseNet: BN + ReLU after the last dense block
    ("stages", "stages.-1"),  # ConvNeXt, RegNet, ...: the last stage
]


#: The automatic target layer is the deepest stage whose map has at least this many cells a side (at the input size).
MIN_MAP_SIDE = 7
#: A requested layer whose map is this many cells a side or fewer gets a warning (its heatmap is a few blocks).
COARSE_MAP_SIDE = 2


def _stage_paths(backbone: nn.Module) -> list[str] | None:
    """The backbone's stages in forward order (paths below it), for the known families; None otherwise."""
    if _get_module(backbone, "layer4") is not None:  # ResNet and relatives
        return [f"layer{i}" for i in range(1, 5) if _get_module(backbone, f"layer{i}") is not None]
    blocks = getattr(backbone, "blocks", None)
    if _get_module(backbone, "conv_head") is not None and isinstance(blocks, nn.Sequential):  # EfficientNet / MobileNet
        return [f"blocks.{i}" for i in range(len(blocks))] + (["bn2"] if _get_module(backbone, "bn2") is not None else [])
    if _get_module(backbone, "features.norm5") is not None:  # DenseNet: dense blocks, then BN + ReLU after the last
        names = [n for n, _ in backbone.features.named_children() if n.startswith("denseblock")]
        return [f"features.{n}" for n in names] + ["features.norm5"]
    stages = getattr(backbone, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):  # ConvNeXt, RegNet, ...
        return [f"stages.{i}" for i in range(len(stages))]
    return None


def _stage_candidates(model: nn.Module) -> list[str]:
    """Full module names of the image backbone's stages (known families), else []."""
    _, backbone = _image_backbone(model)
    if backbone is None:
        return []
    out = []
    for path in _stage_paths(backbone) or []:
        m = _get_module(backbone, path)
        if m is not None:
            out.append(_module_name(model, m))
    return out


def _map_sizes(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(height, width) of the 4-D output of each named module for input ``x`` (one forward pass with hooks)."""
    modules = dict(model.named_modules())
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for n in names:

        def hook(_m, _inp, out, n=n):
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen[n] = (int(out.shape[2]), int(out.shape[3]))

        hooks.append(modules[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x[:1], None if meta is None else meta[:1])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _deepest_fine(sizes: list[tuple[str, tuple[int, int]]]) -> str:
    """The last (deepest) entry whose map is at least MIN_MAP_SIDE a side; else the deepest of the largest maps."""
    fine = [n for n, hw in sizes if min(hw) >= MIN_MAP_SIDE]
    if fine:
        return fine[-1]
    best = max(min(hw) for _, hw in sizes)
    return [n for n, hw in sizes if min(hw) == best][-1]


@dataclass
class TargetLayer:
    """The layer a class-activation map is computed at.

    Attributes:
        name: module name (``backbone.layer4``).
        module: the module.
        map_size: (height, width) of its feature map at the input it was chosen for; None when not measured.
        warning: one line when the map is coarse (:data:`COARSE_MAP_SIDE` a side or less), else None.
    """

    name: str
    module: nn.Module
    map_size: tuple[int, int] | None = None
    warning: str | None = None


# measured map sizes per network and input shape: a choice costs one extra forward pass the first time only
_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _coarse_warning(name: str, hw: tuple[int, int], x: torch.Tensor, better: tuple[str, tuple[int, int]] | None) -> str | None:
    if min(hw) > COARSE_MAP_SIDE:
        return None
    msg = (f"target layer {name} has a {hw[0]}x{hw[1]} feature map at this model's {x.shape[-2]}x{x.shape[-1]} px input: "
           f"the heatmap can only show {hw[0]}x{hw[1]} regions")
    if better is not None and better[0] != name and min(better[1]) > min(hw):
        msg += f"; {better[0]} gives {better[1][0]}x{better[1][1]}"
    return msg


def choose_target_layer(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None = None, name: str | None = None) -> TargetLayer:
    """The layer to explain for input ``x`` (at the bundle's input size), with its map size and any warning.

    Without ``name``: the deepest stage whose map is at least :data:`MIN_MAP_SIDE` a side (:func:`find_target_layer`);
    with ``name``: that module, with a warning when its map is :data:`COARSE_MAP_SIDE` a side or smaller.

    Example:
        >>> from medlens.models import create_model
        >>> m = create_model({"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 224})
        >>> t = choose_target_layer(m.eval(), torch.zeros(1, 1, 224, 224))
        >>> t.name, t.map_size, t.warning
        ('backbone.layer4', (7, 7), None)
    """
    layer_name, module = find_target_layer(model, x, meta, name)
    per_net = _SIZES.setdefault(model, {})
    key = (tuple(x.shape[1:]), None if meta is None else tuple(meta.shape[1:]), layer_name)
    if key not in per_net:
        cands = _stage_candidates(model)
        sizes = _map_sizes(model, x, meta, cands if layer_name in cands else [*cands, layer_name])
        auto = [(n, sizes[n]) for n in cands if n in sizes]
        best = (_deepest_fine(auto), sizes[_deepest_fine(auto)]) if auto else None
        per_net[key] = (sizes.get(layer_name), best)
    hw, best = per_net[key]
    return TargetLayer(layer_name, module, hw, None if hw is None else _coarse_warning(layer_name, hw, x, best))


def _get_module(root: nn.Module, path: str) -> nn.Module | None:
    m: nn.Module = root
    for part in path.split("."):
        if part.lstrip("-").isdigit() and isinstance(m, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if not -len(m) <= idx < len(m):
                return None
            m = m[idx]
        elif hasattr(m, part) and isinstance(getattr(m, part), nn.Module):
            m = getattr(m, part)
        else:
            return None
    return m


def _image_backbone(model: nn.Module) -> tuple[str, nn.Module | None]:
    """The timm backbone of a classifier (or of a fusion model's image branch): (name prefix, module)."""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return "backbone", model.backbone
    for name, mod in model.named_modules():
        if name and isinstance(getattr(mod, "backbone", None), nn.Module):
            return f"{name}.backbone", mod.backbone
    return "", None


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is target:
            return name
    return "?"


def _feature_candidates(model: nn.Module, x: torch.Tensor, meta: torch.Tensor | None) -> list[tuple[str, tuple[int, ...]]]:
    """(module name, output shape) of every non-identity module with a 4-D output, in the order they finished."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, mod in model.named_modules():
        if not name or isinstance(mod, nn.Identity):
            continue

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                seen.append((name, tuple(out.shape)))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x, meta)
    finally:
        for h in hooks:
            h.remove()
    return seen


def find_target_layer(model: nn.Module, x: torch.Tensor | None = None, meta: torch.Tensor | None = None, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer to explain: ``name`` if given; else, with an input ``x``, the deepest stage of the image backbone
    whose map is at least :data:`MIN_MAP_SIDE` a side at that input's size; without ``x``, the last stage.

    Args:
        model: an :class:`~medlens.models.classifier.ImageClassifier` (or a fusion model with a ``backbone``).
        x: an example input (1, C, H, W) at the bundle's input size; needed for families without a known rule.
        meta: example metadata for fusion models.
        name: a module name from ``model.named_modules()`` (``backbone.`` may be left out).

    Returns:
        (module name, module).

    Example:
        >>> from medlens.models import create_model
        >>> m = create_model({"type": "classifier", "backbone": "resnet10t", "num_outputs": 1, "in_chans": 1, "image_size": 32})
        >>> find_target_layer(m)[0]
        'backbone.layer4'
    """
    modules = dict(model.named_modules())
    if name:
        prefix, _ = _image_backbone(model)
        for cand in (name, f"{prefix}.{name}" if prefix else name):
            if cand in modules and cand:
                return cand, modules[cand]
            m = _get_module(model, cand)
            if m is not None:
                return _module_name(model, m), m
        stages = [n for n, mod in modules.items() if n and re.search(r"(layer\d|stages?\.\d+|blocks\.\d+|features\.\w+|bn2|conv_head)$", n)]
        raise ValueError(f"target layer {name!r} not found in the network; candidates: {', '.join(stages[-12:]) or 'see model.named_modules()'}")
    prefix, backbone = _image_backbone(model)
    stages = _stage_candidates(model) if x is not None else []
    if stages:  # the size rule: the deepest stage with a map of at least MIN_MAP_SIDE a side
        sizes = _map_sizes(model, x, meta, stages)
        auto = [(n, sizes[n]) for n in stages if n in sizes]
        if auto:
            chosen = _deepest_fine(auto)
            return chosen, modules[chosen]
    if backbone is not None:
        for marker, path in _FAMILY_LAYERS:
            if _get_module(backbone, marker) is not None:
                m = _get_module(backbone, path)
                if m is not None:
                    return _module_name(model, m), m
    if x is None:
        raise ValueError(f"no known target layer for {type(backbone or model).__name__}; pass target_layer=<module name>")
    # generic: the last module (not the pooled head) whose 4-D output has the final feature map's shape
    cands = _feature_candidates(model, x, meta)
    if not cands:
        raise ValueError(f"{type(model).__name__} has no 4-D feature map to explain; pass target_layer=<module name>")
    final_shape = cands[-1][1]
    spatial = [c for c in cands if c[1][2] * c[1][3] > 1]
    if final_shape[2] * final_shape[3] == 1 and spatial:  # a pooled (B, C, 1, 1) head output: take the map before it
        final_shape = spatial[-1][1]
    if min(final_shape[2:]) < MIN_MAP_SIDE:  # the size rule: the last module whose map is still large enough
        fine = [c for c in cands if min(c[1][2:]) >= MIN_MAP_SIDE]
        if fine:
            final_shape = fine[-1][1]
    chosen = [c for c in cands if c[1] == final_shape][-1][0]
    return chosen, modules[chosen]


def _members(model: nn.Module) -> nn.ModuleList | None:
    """An ensemble's member networks (:class:`~medlens.models.ensemble.EnsembleNet`), else None."""
    members = getattr(model, "members", None)
    return members if isinstance(members, nn.ModuleList) else None


def find_target_layers(model: nn.Module, x: torch.Tensor | None = None, meta: torch.Tensor | None = None,
                       name: str | None = None) -> tuple[str, list[nn.Module]]:
    """The layers to explain: one (:func:`find_target_layer`), or the same layer of every member of an ensemble.

    For an ensemble ``name`` is a member's layer (``backbone.layer3``; a ``members.<i>.`` prefix is dropped), and
    the map is the mean of the members' maps (pytorch-grad-cam averages its target layers).

    Returns:
        (a display name, ``members.*.backbone.layer4`` for an ensemble; the modules).
    """
    display, layers, _ = _target_layers(model, x, meta, name)
    return display, layers


def _target_layers(model: nn.Module, x: torch.Tensor | None, meta: torch.Tensor | None,
                   name: str | None) -> tuple[str, list[nn.Module], str | None]:
    """(display name, modules, warning): :func:`find_target_layers` with the coarse-map warning."""
    members = _members(model)
    if members is None:
        if x is None:
            n, layer = find_target_layer(model, x, meta, name)
            return n, [layer], None
        t = choose_target_layer(model, x, meta, name)
        return t.name, [t.module], t.warning
    inner = re.sub(r"^members\.\d+\.", "", name) if name else None
    found = ([TargetLayer(*find_target_layer(m, x, meta, inner)) for m in members] if x is None
             else [choose_target_layer(m, x, meta, inner) for m in members])
    names = sorted({t.name for t in found})
    display = f"members.*.{names[0]}" if len(names) == 1 else ", ".join(f"members.{i}.{t.name}" for i, t in enumerate(found))
    return display, [t.module for t in found], next((t.warning for t in found if t.warning), None)


# ---------------------------------------------------------------------------------------------- CAM
class _CamModel(nn.Module):
    """model(x) with fixed metadata, and an input that requires grad (the weights are frozen)."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        meta = None if self.meta is None else self.meta.expand(x.shape[0], -1)
        return self.model(x, meta)


class _LogitTarget:
    """Score = sign * logit[index]: the negative class of a binary model is explained by -logit."""

    def __init__(self, index: int, sign: float = 1.0) -> None:
        self.index = index
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * (output[self.index] if output.ndim == 1 else output[:, self.index])


def _explain_network(predictor: PredictorLike) -> nn.Module:
    """A private, frozen copy of the torch network: the predictor's own model is never hooked."""
    net = getattr(predictor, "cam_network", None)
    if net is None:
        src = predictor.model  # OnnxPredictor loads the bundle's PyTorch weights here
        net = copy.deepcopy(src).cpu().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        predictor.cam_network = net
    return net


def default_labels(prediction: Prediction, label_names: Sequence[str], task: str) -> list[str]:
    """Labels explained when none is requested.

    Multi-label: the labels above their threshold (the most probable one when none is); multiclass: the
    predicted class; binary: the positive class.
    """
    if task == "binary":
        return [label_names[1]]
    if task == "multiclass":
        return list(prediction.predicted[:1])
    if prediction.predicted:
        return list(prediction.predicted)
    return [max(prediction.probabilities, key=prediction.probabilities.get)]


def _targets_for(labels: Sequence[str], names: Sequence[str], task: str) -> list[_LogitTarget]:
    out = []
    for lab in labels:
        k = names.index(lab)
        if task == "binary":
            out.append(_LogitTarget(0, 1.0 if k == 1 else -1.0))
        else:
            out.append(_LogitTarget(k))
    return out


def explain_cam(predictor: PredictorLike, img: np.ndarray, src: str, kind: str, labels: Sequence[str] | None, method: str,
                metadata: dict | None = None, target_layer: str | None = None) -> list[Explanation]:
    """Class-activation maps of one decoded image, one per label (default: :func:`default_labels`).

    Example:
        >>> exps = explain_cam(predictor, img, "chest.png", "multilabel", ["Effusion"], "gradcam")  # doctest: +SKIP
    """
    names = list(predictor.manifest.label_names)
    CAM_METHODS.get(method)  # unknown method -> error listing the valid ones
    pred = predictor.predict([img], metadata=None if metadata is None else [metadata], names=[src])[0]
    if not pred.ok:
        raise ValueError(f"{src}: {pred.error}")
    labels = list(labels) if labels else default_labels(pred, names, kind)
    unknown = [lab for lab in labels if lab not in names]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r}; this model's labels: {', '.join(names)}")
    x = torch.from_numpy(predictor.transform(img))[None]
    meta_np = predictor.encode_metadata(None if metadata is None else [metadata], 1)
    meta = None if meta_np is None else torch.from_numpy(np.asarray(meta_np, dtype=np.float32))
    cam_cls = CAM_METHODS.create(method)
    with LOCK:
        net = _explain_network(predictor)
        layer_name, layers, warning = _target_layers(net, x, meta, target_layer)
        wrapped = _CamModel(net, meta).eval()
        targets = _targets_for(labels, names, kind)
        with cam_cls(model=wrapped, target_layers=layers) as cam:
            # one forward/backward per label: the batch holds the same image once per requested label
            maps = cam(input_tensor=x.repeat(len(labels), 1, 1, 1), targets=targets)
    log.debug("%s: %s at %s for %s", src, method, layer_name, labels)
    if warning:
        log.warning("%s", warning)
    out = [
        explanation_from_map(img, maps[i], lab, method, _value_of(pred, lab), layer_name)
        for i, lab in enumerate(labels)
    ]
    for e in out:
        e.warning = warning  # shown by the CLI, the API (a header) and the page
    return out


def _value_of(pred: Prediction, label: str) -> float:
    """The number an explanation map is of: a label's probability, or a task's predicted value."""
    probs = getattr(pred, "probabilities", None)
    if probs is not None:
        return float(probs.get(label, float("nan")))
    value = getattr(pred, "value", None)
    return float("nan") if value is None else float(value)


def layer_names(model: nn.Module) -> list[str]:
    """Names of the network's layers a user may pick as CAM target (convolutional stages and blocks)."""
    pat = re.compile(r"(layer\d|stages?\.\d+|blocks\.\d+|features\.\w+|bn2|conv_head|norm5)$")
    members = _members(model)
    if members is not None and len(members):  # an ensemble: a member's layer names (every member is explained there)
        model = members[0]
    return [n for n, _ in model.named_modules() if n and pat.search(n)]
