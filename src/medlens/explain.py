"""Explanations: class-activation maps per label (pytorch-grad-cam) and anomaly error maps.

``explain(predictor, image)`` returns one :class:`Explanation` per explained label: a heatmap in [0, 1] at the
decoded image's own size, and an overlay PNG. The model input is built with the predictor's preprocessing (the
one function training used), and the map is resized back to the original image, so a pixel of the heatmap
lies over the same pixel of the image the user gave.

Methods (``list_methods()``): ``gradcam``, ``gradcam++``, ``hirescam``, ``layercam``, ``xgradcam`` and
``eigencam`` (EigenCAM is gradient-free and class-agnostic: every label gets the same map). The target layer
is the backbone's last convolutional stage, found automatically for the timm families the configs use
(ResNet ``layer4``, EfficientNet ``bn2``, DenseNet ``features.norm5``, ConvNeXt ``stages.<last>``) and by a
generic search otherwise; ``target_layer="backbone.layer3"`` picks one by name.

Anomaly bundles (``task: anomaly``) are explained by their pixel reconstruction-error map, method ``error_map``.

Example:
    >>> from medlens import Predictor
    >>> from medlens.explain import explain
    >>> p = Predictor.from_bundle("runs/nih/bundle")  # doctest: +SKIP
    >>> [e.label for e in explain(p, "chest.png", method="gradcam++")]  # doctest: +SKIP
    ['Effusion']
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn

from medlens.registry import Registry

if TYPE_CHECKING:
    from medlens.predict import ImageInput, Prediction, Predictor

log = logging.getLogger("medlens.explain")

CAM_METHODS: Registry = Registry("explanation method")
ERROR_MAP = "error_map"  # the one method of anomaly bundles

# Grad-CAM registers hooks on the network and writes gradients: one explanation at a time per process.
_LOCK = threading.RLock()


@dataclass
class Explanation:
    """One label's explanation of one image.

    Attributes:
        label: the explained label (class name).
        method: the method's name (``gradcam``, ``eigencam``, ``error_map``, ...).
        probability: the model's probability for ``label`` on this image (anomaly: the anomaly probability).
        heatmap: float32 (H, W) in [0, 1] at the ORIGINAL decoded image size (1 = most important).
        overlay_png: PNG bytes of the heatmap blended over the image.
        target_layer: the network layer the map was computed at (empty for error maps).
    """

    label: str
    method: str
    probability: float
    heatmap: np.ndarray
    overlay_png: bytes
    target_layer: str = ""


# ---------------------------------------------------------------------------------------------- methods
def _cam_class(name: str) -> Callable[[], type]:
    def factory() -> type:
        import pytorch_grad_cam as pgc

        return getattr(pgc, name)

    return factory


for _name, _cls in {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "xgradcam": "XGradCAM",
    "eigencam": "EigenCAM",
}.items():
    CAM_METHODS.register(_name)(_cam_class(_cls))


def list_methods() -> list[str]:
    """Names accepted by ``explain(method=...)`` for classifiers (anomaly bundles use ``error_map``).

    Example:
        >>> "gradcam" in list_methods()
        True
    """
    return CAM_METHODS.names()


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


# ---------------------------------------------------------------------------------------------- rendering
def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def overlay_png(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45, max_side: int = 1024) -> bytes:
    """Blend a [0, 1] heatmap (JET colours) over a uint8 image and encode it as PNG.

    Args:
        image: uint8 (H, W) or (H, W, C).
        heatmap: float (H, W) in [0, 1], the image's size.
        alpha: weight of the colour map.
        max_side: larger images are shrunk to this side first (the PNG is for display).

    Example:
        >>> overlay_png(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32))[:4]
        b'\\x89PNG'
    """
    rgb = _to_rgb(image).astype(np.float32)
    heat = np.clip(heatmap.astype(np.float32), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        heat = cv2.resize(heat, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        heat = cv2.resize(heat, size, interpolation=cv2.INTER_AREA)
    colour = cv2.applyColorMap(np.uint8(np.round(255 * heat)), cv2.COLORMAP_JET)[:, :, ::-1].astype(np.float32)
    out = np.clip((1.0 - alpha) * rgb + alpha * colour, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(out[:, :, ::-1]))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def image_png(image: np.ndarray, max_side: int = 1024) -> bytes:
    """A uint8 image as PNG bytes (shrunk to ``max_side``), for reports."""
    rgb = _to_rgb(image)
    h, w = rgb.shape[:2]
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def explanation_from_map(image: np.ndarray, cam: np.ndarray, label: str, method: str, probability: float, target_layer: str = "", normalize: bool = True) -> Explanation:
    """Build an :class:`Explanation` from a map at any resolution: resize to the image, scale to [0, 1], render.

    Also the hook for other explainers (e.g. anomaly error maps) to produce the same output.
    """
    h, w = image.shape[:2]
    m = np.nan_to_num(np.asarray(cam, dtype=np.float32).squeeze(), nan=0.0)
    if m.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {m.shape}")
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    if normalize:
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    heat = np.clip(m, 0.0, 1.0).astype(np.float32)
    return Explanation(label, method, float(probability), heat, overlay_png(image, heat), target_layer)


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


def _explain_network(predictor: Predictor) -> nn.Module:
    """A private, frozen copy of the torch network: the predictor's own model is never hooked."""
    net = getattr(predictor, "_cam_net", None)
    if net is None:
        src = predictor.model  # OnnxPredictor loads the bundle's PyTorch weights here
        net = copy.deepcopy(src).cpu().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        predictor._cam_net = net
    return net


def default_labels(prediction: Prediction, label_names: Sequence[str], task: str) -> list[str]:
    """Labels explained when none is requested.

    Multi-label: the labels above their threshold (the most probable one when none is); multiclass: the
    predicted class; binary: the positive class.
    """
    if task in ("binary", "anomaly"):
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


def explain(
    predictor: Predictor,
    image: ImageInput,
    label: str | Sequence[str] | None = None,
    method: str = "gradcam",
    metadata: dict | None = None,
    target_layer: str | None = None,
) -> list[Explanation]:
    """Explain one image: one heatmap + overlay per label.

    Args:
        predictor: a :class:`~medlens.predict.Predictor` (the ONNX predictor works when the bundle still has
            its PyTorch weights).
        image: a path (PNG, JPEG, DICOM, ...), bytes, numpy array or PIL image.
        label: a label name (or several); default: see :func:`default_labels`.
        method: one of :func:`list_methods` (``error_map`` for anomaly bundles).
        metadata: patient metadata for fusion models (missing fields allowed).
        target_layer: module name to explain; default: the backbone's last convolutional stage.

    Returns:
        One :class:`Explanation` per label, heatmaps at the decoded image's size.

    Raises:
        ValueError: unknown label, method or layer.

    Example:
        >>> exps = explain(predictor, "chest.png", label="Effusion", method="gradcam")  # doctest: +SKIP
        >>> exps[0].heatmap.shape == load_image("chest.png").shape[:2]  # doctest: +SKIP
        True
    """
    from medlens.predict import decode_input

    manifest = predictor.manifest
    names = list(manifest.label_names)
    img, src = decode_input(image)
    if manifest.task == "anomaly":
        return _explain_anomaly(predictor, img, src, label, method, metadata)
    CAM_METHODS.get(method)  # unknown method -> error listing the valid ones
    pred = predictor.predict([img], metadata=None if metadata is None else [metadata], names=[src])[0]
    if not pred.ok:
        raise ValueError(f"{src}: {pred.error}")
    if label is None or (isinstance(label, str) and not label):
        labels = default_labels(pred, names, manifest.task)
    else:
        labels = [label] if isinstance(label, str) else list(label)
    unknown = [lab for lab in labels if lab not in names]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r}; this model's labels: {', '.join(names)}")

    x = torch.from_numpy(predictor.transform(img))[None]
    meta_np = predictor.encode_metadata(None if metadata is None else [metadata], 1)
    meta = None if meta_np is None else torch.from_numpy(np.asarray(meta_np, dtype=np.float32))
    cam_cls = CAM_METHODS.create(method)
    with _LOCK:
        net = _explain_network(predictor)
        layer_name, layer = find_target_layer(net, x, meta, target_layer)
        wrapped = _CamModel(net, meta).eval()
        targets = _targets_for(labels, names, manifest.task)
        with cam_cls(model=wrapped, target_layers=[layer]) as cam:
            # one forward/backward per label: the batch holds the same image once per requested label
            maps = cam(input_tensor=x.repeat(len(labels), 1, 1, 1), targets=targets)
    log.debug("%s: %s at %s for %s", src, method, layer_name, labels)
    return [
        explanation_from_map(img, maps[i], lab, method, pred.probabilities.get(lab, float("nan")), layer_name)
        for i, lab in enumerate(labels)
    ]


def _explain_anomaly(predictor: Predictor, img: np.ndarray, src: str, label, method: str, metadata: dict | None) -> list[Explanation]:
    """Anomaly bundles: the pixel reconstruction-error map (delegates to ``medlens.engine.anomaly`` when it has one)."""
    if method not in (ERROR_MAP, "gradcam"):  # gradcam is every client's default: map it to the error map
        raise ValueError(f"anomaly models are explained by their reconstruction error; method must be {ERROR_MAP!r}, got {method!r}")
    try:
        from medlens.engine import anomaly as _anomaly

        hook = getattr(_anomaly, "error_map_explanation", None)
    except ImportError:
        hook = None
    if hook is not None:
        out = hook(predictor, img, label=label, metadata=metadata)
        return list(out) if isinstance(out, (list, tuple)) else [out]
    from medlens.models.autoencoder import error_map

    names = predictor.manifest.label_names
    pred = predictor.predict([img], names=[src])[0]
    x = torch.from_numpy(predictor.transform(img))[None]
    with _LOCK, torch.no_grad():
        net = _explain_network(predictor)
        emap = error_map(x, net(x, None))[0, 0].numpy()
    # scale by the map's own maximum (not min-max) so a uniformly well-reconstructed image stays dark
    peak = float(emap.max())
    heat = emap / peak if peak > 0 else emap
    lab = names[-1]
    return [explanation_from_map(img, heat, lab, ERROR_MAP, pred.probabilities.get(lab, float("nan")), normalize=False)]


# ---------------------------------------------------------------------------------------------- files
def _safe(s: str) -> str:
    """A file-name-safe version of a label or method name (``gradcam++`` -> ``gradcampp``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("+", "p")).strip("_") or "x"


def write_explanations(explanations: Sequence[Explanation], out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>_<label>_<method>.png`` (overlay) and ``.npy`` (heatmap) per explanation, plus a JSON summary.

    Example:
        >>> write_explanations(explain(p, "a.png"), "out", "a")  # doctest: +SKIP
    """
    from medlens.bundle import write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    summary: list[dict[str, Any]] = []
    for e in explanations:
        base = f"{_safe(stem)}_{_safe(e.label)}_{_safe(e.method)}"
        png = out / f"{base}.png"
        tmp = png.with_name(f".{png.name}.tmp")
        tmp.write_bytes(e.overlay_png)
        tmp.replace(png)
        npy = out / f"{base}.npy"
        tmp = npy.with_name(f".{base}.tmp.npy")
        np.save(tmp, e.heatmap)
        tmp.replace(npy)
        paths += [png, npy]
        summary.append({"label": e.label, "method": e.method, "probability": e.probability, "target_layer": e.target_layer, "overlay": png.name, "heatmap": npy.name})
    js = out / f"{_safe(stem)}_explanations.json"
    write_json_atomic(js, summary)
    paths.append(js)
    return paths


def explain_to_dir(bundle: str | Path, image: str | Path, out_dir: str | Path, labels: Sequence[str] | None = None, method: str = "gradcam", target_layer: str | None = None, metadata: str | dict | None = None) -> list[Explanation]:
    """``medlens explain``: load a bundle, explain one image file and write the overlays into ``out_dir``."""
    from medlens.predict import Predictor

    meta = json.loads(metadata) if isinstance(metadata, str) else metadata
    if meta is not None and not isinstance(meta, dict):
        raise ValueError("--metadata must be a JSON object, e.g. '{\"age\": 63, \"sex\": \"F\"}'")
    predictor = Predictor.from_bundle(bundle, batch_size=1)
    exps = explain(predictor, str(image), label=list(labels) if labels else None, method=method, metadata=meta, target_layer=target_layer)
    write_explanations(exps, out_dir, Path(image).stem)
    return exps


# `medlens.explain` is both this module and the public function; calling the module calls the function.
from medlens._callable_module import make_module_callable  # noqa: E402

make_module_callable(__name__, "explain")
