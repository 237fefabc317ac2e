"""Image classifier: a timm backbone and a linear head, as a plain ``nn.Module``.

``forward_features`` returns the backbone's last feature map (what Grad-CAM hooks), ``forward_head`` pools it
and applies the head (what metadata fusion extends).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("medlens.models")


def stem_reduction(image_size: int, small_input: bool | str | int) -> int:
    """How much to cut the backbone's input stride: 4 for <= 32 px, 2 for <= 96 px, else 1.

    A ResNet's stride-32 stem turns a 28 px image into a 1x1 map; cutting it keeps a ~4x4 final map.
    """
    if small_input is False:
        return 1
    if isinstance(small_input, int) and not isinstance(small_input, bool):
        return int(small_input)  # an explicit reduction (e.g. 2 for a lighter 28 px model)
    if small_input is True:
        return 4 if image_size <= 48 else 2
    if image_size <= 32:
        return 4
    if image_size <= 96:
        return 2
    return 1


def adapt_stem(net: nn.Module, reduction: int) -> bool:
    """Reduce a timm backbone's stem stride in place. Returns False when the family is not supported."""
    if reduction <= 1:
        return True
    if hasattr(net, "conv1") and hasattr(net, "maxpool"):  # ResNet / ResNeXt / SE-ResNet families
        net.maxpool = nn.Identity()
        if reduction >= 4:
            first = net.conv1 if isinstance(net.conv1, nn.Conv2d) else next(m for m in net.conv1.modules() if isinstance(m, nn.Conv2d))
            if isinstance(net.conv1, nn.Conv2d) and first.kernel_size[0] == 7:
                # CIFAR-style 3x3 stride-1 stem, as in the MedMNIST reference ResNets
                net.conv1 = nn.Conv2d(first.in_channels, first.out_channels, 3, 1, 1, bias=False)
            else:
                first.stride = (1, 1)
        return True
    if hasattr(net, "conv_stem") and isinstance(net.conv_stem, nn.Conv2d):  # EfficientNet / MobileNet
        net.conv_stem.stride = (1, 1)
        return True
    feats = getattr(net, "features", None)
    if isinstance(feats, nn.Sequential) and hasattr(feats, "conv0") and hasattr(feats, "pool0"):  # DenseNet
        feats.pool0 = nn.Identity()
        if reduction >= 4:
            feats.conv0.stride = (1, 1)
        return True
    if hasattr(net, "stem") and isinstance(net.stem, nn.Sequential) and isinstance(net.stem[0], nn.Conv2d):
        conv = net.stem[0]  # ConvNeXt patchify stem (k=4, s=4) -> k=s=4/reduction
        k = max(1, conv.kernel_size[0] // min(reduction, conv.kernel_size[0]))
        net.stem[0] = nn.Conv2d(conv.in_channels, conv.out_channels, k, k, bias=conv.bias is not None)
        return True
    return False


class ImageClassifier(nn.Module):
    """timm backbone + dropout + linear head.

    Args:
        backbone: a timm model name (``resnet18``, ``efficientnet_b0``, ``convnext_nano``, ...).
        num_outputs: logits (1 for binary, one per class or label otherwise).
        in_chans: 1 for grey, 3 for colour.
        pretrained: ``False``; ``True`` for timm's default pretrained tag of the backbone; a Hugging Face hub id
            (``timm/resnet18.tv_in1k``); or a local ``.safetensors``/``.pth``/``.bin`` file (see
            :mod:`medlens.models.pretrained`): timm's tensor names, or a third-party checkpoint (nested under
            ``state_dict``/``teacher``/``model``/``student``, ``module.``/``backbone.``/``encoder.`` prefixes), whose
            match report is kept in :attr:`pretrained_info` (``match``); one matching under half the backbone is refused. Hub weights come from the Hugging Face cache (``HF_HOME``),
            downloaded on first use unless ``HF_HUB_OFFLINE=1``. A 3-channel first convolution is summed over
            RGB for ``in_chans=1``. What was loaded is in :attr:`pretrained_info` (source, revision, sha256).
        image_size: input size, used to adapt the stem for small images.
        small_input: ``auto``, True, False, or a stride reduction 1/2/4 (see :func:`stem_reduction`).

    Example:
        >>> m = ImageClassifier("resnet18", num_outputs=1, in_chans=1, image_size=28)
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_outputs: int = 1,
        in_chans: int = 3,
        pretrained: bool | str = False,
        image_size: int = 224,
        small_input: bool | str | int = "auto",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        from medlens.models.pretrained import (
            PretrainedWeightsError,
            load_medlens_backbone,
            load_weights_file,
            match_line,
            medlens_backbone_info,
            missing_backbone_weights,
            pretrained_record,
            resolve_pretrained,
            weight_names,
        )

        kw: dict[str, Any] = {"drop_path_rate": drop_path_rate} if drop_path_rate > 0 else {}
        info = resolve_pretrained(backbone, pretrained)
        #: ``{"source", "revision", "sha256"}`` of the pretrained weights loaded, or None (random initialisation)
        self.pretrained_info: dict[str, Any] | None = pretrained_record(info)
        red = stem_reduction(image_size, small_input)
        own = info is not None and medlens_backbone_info(info["file"]) is not None  # written by `medlens pretrain`
        local = info is not None and not own and not str(info["source"]).startswith("hf-hub:")
        foreign = False
        if local:  # a file with timm's tensor names goes through timm's loader below; any other through ours
            if not timm.is_model(backbone):
                raise ValueError(f"model.backbone: unknown timm model {backbone!r}")
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kw)
            foreign = bool(missing_backbone_weights(list(self.backbone.state_dict()), info["file"]))
        if foreign:  # third-party checkpoint: nested dicts, prefixes, a match report (refused under 50 %)
            report = load_weights_file(self.backbone, info["file"], backbone)
            self.pretrained_info = {**(self.pretrained_info or {}), "match": report}
        elif info is None or own:
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **kw)
        else:
            if not timm.is_model(backbone):
                raise ValueError(f"model.backbone: unknown timm model {backbone!r}")
            try:  # timm's own loader: drops the classifier, adapts the first convolution to in_chans
                self.backbone = timm.create_model(
                    backbone, pretrained=True, pretrained_cfg_overlay={"file": info["file"]}, num_classes=0, in_chans=in_chans, **kw,
                )
            except (RuntimeError, ValueError, OSError, KeyError) as e:
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise PretrainedWeightsError(f"model.pretrained: {info['file']} ({info['source']}) does not load into backbone {backbone!r}: {first}") from None
            # timm loads non-strictly once the classifier is dropped: every backbone tensor must be in the file
            target = list(self.backbone.state_dict())
            missing = missing_backbone_weights(target, info["file"])
            if missing:
                raise PretrainedWeightsError(
                    f"model.pretrained: {info['file']} ({info['source']}) lacks {len(missing)} tensors of backbone {backbone!r}, e.g. {missing[:3]}"
                )
            if local:  # every tensor matched by name (timm checked the shapes): the report says so, with what was left over
                extra = sorted(weight_names(info["file"]) - set(target))
                report = {"backbone_tensors": len(target), "matched": len(target), "missing": 0, "unexpected": len(extra),
                          "shape_mismatches": 0, "prefixes_stripped": [], "nested": [],
                          "examples": {"missing": [], "unexpected": extra[:3], "shape_mismatches": []}}
                self.pretrained_info = {**(self.pretrained_info or {}), "match": report}
                log.info("backbone %s: weights file %s: %s", backbone, info["file"], match_line(report))
            log.info("backbone %s: pretrained weights %s (sha256 %s)", backbone, info["source"], info["sha256"][:12])
        before = dict(self.backbone.named_parameters())
        if red > 1 and not adapt_stem(self.backbone, red):
            log.warning("small-input stem adaptation is not supported for %s; using the stock stem", backbone)
        if own:  # built exactly as pretrained (stem included), then every tensor must match the file
            load_medlens_backbone(self.backbone, info["file"], backbone, in_chans, red)
            log.info("backbone %s: medlens-pretrained weights %s (sha256 %s)", backbone, info["source"], info["sha256"][:12])
        elif info is not None:
            fresh = [n for n, p in self.backbone.named_parameters() if before.get(n) is not p]
            if fresh:  # e.g. ResNet's 7x7 stem conv replaced by a 3x3 stride-1 conv for 28-32 px inputs
                log.info("backbone %s: the small-input stem replaced %s (newly initialised); every other layer is pretrained", backbone, fresh)
        # the width of the pooled vector the head sees: MobileNetV3 pools 576 channels and then widens them to
        # 1024 in its own conv head (timm's head_hidden_size); most families have the two equal
        self.num_features = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_outputs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map (B, C, h, w) for CNNs (tokens for transformers)."""
        return self.backbone.forward_features(x)

    def pool(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features), with the backbone's own pooling."""
        return self.backbone.forward_head(feats, pre_logits=True)

    def forward_head(self, feats: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.pool(feats)))

    def stage_names(self) -> list[tuple[str, int]]:
        """The backbone's earlier stages (timm's ``feature_info``: stem, then each stage but the last) as
        ``(module name, channels)``; the last stage is the feature map :meth:`pool` reads."""
        info = getattr(self.backbone, "feature_info", None) or []
        if hasattr(info, "info"):  # a timm FeatureInfo object
            info = info.info
        stages = [(str(d["module"]), int(d["num_chs"])) for d in info if isinstance(d, dict) and d.get("module") and d.get("num_chs")]
        mods = dict(self.backbone.named_modules())
        return [(n, c) for n, c in stages[:-1] if n in mods]

    def ood_segments(self) -> list[int]:
        """Widths of the segments :meth:`forward_with_stages` concatenates: each earlier stage (channel means and
        standard deviations), then the pooled features."""
        return [2 * c for _, c in self.stage_names()] + [self.num_features]

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(feature map, stage features)``: the feature map of :meth:`forward_features` and, from the same pass,
        the channel means and standard deviations of every earlier stage's output followed by the pooled features
        (B, sum(ood_segments)).

        Early stages see intensity and texture, the pooled features content: together they tell a dermoscopy
        photo or an adult radiograph from a paediatric one better than the pooled features alone
        (benchmarks/ood.py). Forward hooks read the stages, so the traced ONNX graph exports them too.
        """
        stages = self.stage_names()
        mods = dict(self.backbone.named_modules())
        outs: list[tuple[torch.Tensor, int]] = []
        handles = []
        for name, chans in stages:
            def hook(_m, _i, o, chans=chans):
                outs.append((o[0] if isinstance(o, (tuple, list)) else o, chans))
            handles.append(mods[name].register_forward_hook(hook))
        try:
            fmap = self.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        if len(outs) != len(stages):  # a stage skipped or called twice: the segments would not line up
            raise RuntimeError(f"stage features: {len(outs)} outputs from {len(stages)} stages of {type(self.backbone).__name__}")
        pooled = [_channel_stats(o, c) for o, c in outs]
        return fmap, torch.cat([*(p.to(fmap.dtype) for p in pooled), self.pool(fmap)], dim=1)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), metadata)

    def backbone_parameters(self):
        return self.backbone.parameters()

    def head_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]


def _channel_stats(o: torch.Tensor, chans: int) -> torch.Tensor:
    """The mean and the standard deviation of each channel of a stage output (B, 2 * chans): NCHW, NHWC (found by
    the channel count) or tokens (B, N, C)."""
    if o.ndim == 4:
        dims = (1, 2) if o.shape[1] != chans and o.shape[-1] == chans else (2, 3)
    elif o.ndim == 3:
        dims = (1,)
    else:
        raise RuntimeError(f"stage features: an output of shape {tuple(o.shape)} has no spatial or token axis")
    o = o.float()  # the population spread: 0, not NaN, for a 1x1 map (a small input's last stages)
    return torch.cat([o.mean(dim=dims), o.std(dim=dims, correction=0)], dim=1)


# ---------------------------------------------------------------------------------------- checkpoints
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "encoder_q.", "base_encoder.", "teacher.", "student.", "net.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, without executing pickled code."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.checkpoint: file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{p}: cannot read as a weights-only torch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "teacher", "model_state", "net"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{p}: no state dict found")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for pre in _PREFIXES:
            if key.startswith(pre):
                key = key[len(pre) :]
                changed = True
    return key


def load_backbone_checkpoint(model: ImageClassifier, path: str | Path) -> dict[str, list[str]]:
    """Load a local checkpoint into ``model.backbone``, remapping common prefixes.

    ``module.``, ``encoder.``, ``backbone.`` and similar prefixes (DDP, MoCo, DINO, SimCLR) are stripped; a
    3-channel first convolution is summed to 1 channel for grey inputs; tensors whose shape does not fit
    (e.g. a different classifier) are skipped and reported.

    Returns:
        ``{"missing": [...], "unexpected": [...], "skipped_shape": [...], "loaded": [...]}``.
    """
    src = {_strip(k): v for k, v in read_state_dict(path).items()}
    target = model.backbone.state_dict()
    loaded, skipped, unexpected = {}, [], []
    for k, v in src.items():
        if k not in target:
            unexpected.append(k)
            continue
        t = target[k]
        if v.shape != t.shape and v.ndim == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:] and t.shape[1] == 1:
            v = v.sum(dim=1, keepdim=True)  # RGB stem -> grey stem
        if v.shape != t.shape:
            skipped.append(f"{k} {tuple(v.shape)}->{tuple(t.shape)}")
            continue
        loaded[k] = v
    if not loaded:
        raise ValueError(f"{path}: no tensor matches backbone {type(model.backbone).__name__}; first keys: {list(src)[:5]}")
    missing = [k for k in target if k not in loaded]
    model.backbone.load_state_dict(loaded, strict=False)
    report = {"loaded": sorted(loaded), "missing": missing, "unexpected": unexpected, "skipped_shape": skipped}
    log.info(
        "checkpoint %s: loaded %d tensors, %d missing, %d unexpected, %d shape mismatches",
        path, len(loaded), len(missing), len(unexpected), len(skipped),
    )
    if missing:
        log.warning("checkpoint %s: missing keys (left as initialised): %s", path, missing[:10])
    if unexpected:
        log.warning("checkpoint %s: unexpected keys (ignored): %s", path, unexpected[:10])
    return report


def build_backbone(backbone: str, in_chans: int, image_size: int, small_input: bool | str | int = "auto",
                   pretrained: bool | str = False) -> tuple[nn.Module, int, dict[str, Any] | None]:
    """A timm backbone without classifier, stem adapted to the image size, optionally with pretrained weights.

    What ``medlens pretrain`` trains and what the feature detector (``patchcore``) reads: the backbone of an
    :class:`ImageClassifier` built with the same arguments, so the weights move between them unchanged.

    Returns:
        (backbone, the stem reduction actually applied (1 when the family has no small-input stem),
        ``{"source", "revision", "sha256"}`` of the pretrained weights or None).

    Example:
        >>> net, red, _ = build_backbone("resnet10t", 1, 28)
        >>> red
        4
    """
    clf = ImageClassifier(backbone, 1, in_chans, pretrained, image_size, small_input)
    red = stem_reduction(image_size, small_input)
    net = clf.backbone
    return net, red if _stem_adapted(net, red) else 1, clf.pretrained_info


def _stem_adapted(net: nn.Module, reduction: int) -> bool:
    """Whether :func:`adapt_stem` supports this family (so ``reduction`` was applied)."""
    import copy

    return reduction <= 1 or adapt_stem(copy.deepcopy(net), reduction)
