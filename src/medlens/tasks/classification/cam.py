"""Class-activation maps per label (pytorch-grad-cam) for classification bundles.

Methods (:func:`list_methods`): ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``, ``xgradcam`` and
``eigencam`` (EigenCAM is gradient-free and class-agnostic: every label gets the same map). The target layer
is the backbone's last convolutional stage, found automatically for the timm families the configs use
(ResNet ``layer4``, EfficientNet ``bn2``, DenseNet ``features.norm5``, ConvNeXt ``stages.<last>``) and by a
generic search otherwise; ``target_layer="backbone.layer3"`` picks one by name.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Callable, Sequence

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
    """The layer to explain: ``name`` if given, else the last convolutional stage of the image backbone.

    Args:
        model: an :class:`~medlens.models.classifier.ImageClassifier` (or a fusion model with a ``backbone``).
        x: an example input (1, C, H, W); needed only for families without a known rule.
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
    members = _members(model)
    if members is None:
        n, layer = find_target_layer(model, x, meta, name)
        return n, [layer]
    inner = re.sub(r"^members\.\d+\.", "", name) if name else None
    found = [find_target_layer(m, x, meta, inner) for m in members]
    names = sorted({n for n, _ in found})
    return (f"members.*.{names[0]}" if len(names) == 1 else ", ".join(f"members.{i}.{n}" for i, (n, _) in enumerate(found))), [m for _, m in found]


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
        layer_name, layers = find_target_layers(net, x, meta, target_layer)
        wrapped = _CamModel(net, meta).eval()
        targets = _targets_for(labels, names, kind)
        with cam_cls(model=wrapped, target_layers=layers) as cam:
            # one forward/backward per label: the batch holds the same image once per requested label
            maps = cam(input_tensor=x.repeat(len(labels), 1, 1, 1), targets=targets)
    log.debug("%s: %s at %s for %s", src, method, layer_name, labels)
    return [
        explanation_from_map(img, maps[i], lab, method, _value_of(pred, lab), layer_name)
        for i, lab in enumerate(labels)
    ]


def _value_of(pred: Prediction, label: str) -> float:
    """The number an explanation map is of: a label's probability, or the predicted value of a regression."""
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
