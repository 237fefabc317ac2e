"""PatchCore-style feature anomaly detector: distance of each image patch to its nearest normal patch.

A frozen timm backbone (weights from ``model.pretrained``, e.g. ``medlens pretrain``'s ``backbone.safetensors``)
describes every patch of an image by its mid-level features (levels ``patch_layers``, each averaged over a 3x3
neighbourhood, the deeper ones upsampled to the finest, concatenated). A memory bank holds the features of the
training normals' patches, thinned by greedy k-centre coreset selection to at most ``memory_size`` rows. The
anomaly map of an image is, per patch, the Euclidean distance to the nearest memory row, upsampled bilinearly
to the input size: ``forward(x) -> (N, 1, H, W)``. The memory is a buffer, so it travels in the bundle's
safetensors and in the ONNX graph; the image score is the task's reduction of the map (mean or percentile;
``score_percentile: 100`` is the max patch distance).

Reference: Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlens.models.registry import MODELS

INPUT_NORMS = ("dataset", "image")


def standardize_images(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each image and channel of ``x`` (N, C, H, W) minus its own mean, divided by its own standard deviation.

    A brightness change (``x + b``) or a contrast change (``a * x``, ``a > 0``) of an image leaves the result
    unchanged. Written with means and powers only, so it exports to ONNX as it runs here.

    Example:
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.allclose(standardize_images(3 * x + 5), standardize_images(x), atol=1e-4)
        True
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    var = centred.pow(2).mean(dim=(2, 3), keepdim=True)
    return centred / torch.sqrt(var + eps)


def greedy_coreset(feats: torch.Tensor, size: int, seed: int = 0, proj_dim: int = 128) -> torch.Tensor:
    """Indices of ``size`` rows of ``feats`` (M, C) chosen by greedy k-centre selection (farthest point first).

    Distances are computed on a fixed random projection to ``proj_dim`` dimensions (as in PatchCore), so the
    cost is ``size * M * proj_dim``. Returns all rows when ``M <= size``.

    Example:
        >>> greedy_coreset(torch.randn(100, 8), 10).shape
        torch.Size([10])
    """
    m = feats.shape[0]
    if m <= size:
        return torch.arange(m)
    g = torch.Generator().manual_seed(seed)
    z = feats.float()
    if z.shape[1] > proj_dim:
        z = z @ (torch.randn(z.shape[1], proj_dim, generator=g) / proj_dim**0.5)
    idx = torch.empty(size, dtype=torch.long)
    idx[0] = int(torch.randint(0, m, (1,), generator=g))
    # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2: one matrix-vector product per pick reads z once (a 224 px bank of
    # ~900k patches: ~5x faster than forming z - c, which writes a copy of z every step)
    sq = z.pow(2).sum(1)
    dist = (sq - 2.0 * (z @ z[idx[0]]) + sq[idx[0]]).clamp_min(0.0)
    for i in range(1, size):
        idx[i] = int(torch.argmax(dist))
        dist = torch.minimum(dist, (sq - 2.0 * (z @ z[idx[i]]) + sq[idx[i]]).clamp_min(0.0))
    return idx


class PatchReservoir:
    """A uniform random sample of at most ``capacity`` patch-feature rows from a stream of batches (Algorithm R).

    Bounds the memory of the memory-bank fill: a 224 px image gives 784 patches of 384 floats (1.2 MB), so 1,000
    training normals would hold 1.2 GB before the coreset; the reservoir holds ``capacity * dim * 4`` bytes whatever
    the number of images, and every patch seen had the same chance to be kept. Seeded: the same stream gives the
    same sample.

    Example:
        >>> r = PatchReservoir(capacity=10, seed=0)
        >>> for _ in range(3):
        ...     r.add(torch.randn(8, 4))
        >>> r.rows().shape, r.seen
        (torch.Size([10, 4]), 24)
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.seen = 0
        self._g = torch.Generator().manual_seed(seed)
        self._rows: torch.Tensor | None = None
        self._filled = 0

    def add(self, rows: torch.Tensor) -> None:
        """Offer ``rows`` (M, C) to the sample."""
        rows = rows.detach().float().cpu()
        if self._rows is None:
            self._rows = torch.empty(self.capacity, rows.shape[1])
        take = min(self.capacity - self._filled, len(rows))  # fill the free slots first
        if take:
            self._rows[self._filled : self._filled + take] = rows[:take]
            self._filled += take
        rest = rows[take:]
        if len(rest):
            # row number n (0-based, over the whole stream) replaces slot j ~ U{0..n} when j < capacity
            n = self.seen + take + torch.arange(len(rest), dtype=torch.float64)
            j = (torch.rand(len(rest), generator=self._g, dtype=torch.float64) * (n + 1)).long()
            hit = torch.nonzero(j < self.capacity).flatten()
            if len(hit):
                slots = j[hit]
                # the later of two rows drawing one slot wins, as in the sequential algorithm
                last = {int(s): int(h) for s, h in zip(slots.tolist(), hit.tolist(), strict=True)}
                self._rows[torch.tensor(list(last.keys()))] = rest[torch.tensor(list(last.values()))]
        self.seen += len(rows)

    def rows(self) -> torch.Tensor:
        """The sample (at most ``capacity`` rows, in no particular order)."""
        if self._rows is None:
            return torch.zeros(0, 0)
        return self._rows[: self._filled]


class PatchCoreDetector(nn.Module):
    """Frozen backbone + memory bank of normal patch features; ``forward(x)`` is the patch-distance map.

    Args:
        backbone: timm model name.
        in_chans: input channels.
        image_size: square input side (selects the small-input stem, as for classifiers).
        small_input: ``auto``/True/False/1/2/4, as ``model.small_input``.
        patch_layers: timm feature levels to describe patches with (``feature_info`` indices).
        memory_size: most memory rows kept by the coreset.
        pretrained: backbone weights (``model.pretrained``), only when building the model to train.
        input_norm: ``dataset`` (the input as preprocessed) or ``image`` (each image standardised by its own
            mean and std first, see :func:`standardize_images`: robust to brightness/contrast shifts).
        patch_position: 0 (classic PatchCore: a patch may match a normal patch anywhere) or a weight w > 0: each
            patch also carries its place (row and column in [0, 1]) scaled by w times the spread of the memory's
            features, so a patch is compared mostly with normal patches from the same part of the image (for
            aligned images such as chest X-rays, where a hazy lung patch resembles normal soft tissue elsewhere).

    Example:
        >>> m = PatchCoreDetector("resnet10t", 1, 28, memory_size=32)
        >>> m.fill_memory(m.patch_features(torch.randn(4, 1, 28, 28)))
        >>> m(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, backbone: str = "resnet18", in_chans: int = 1, image_size: int = 64, small_input: bool | str | int = "auto",
                 patch_layers: Sequence[int] = (2, 3), memory_size: int = 4096, pretrained: bool | str = False,
                 input_norm: str = "dataset", patch_position: float = 0.0) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"task_options.input_norm {input_norm!r}: expected one of {', '.join(INPUT_NORMS)}")
        self.input_norm = input_norm
        from medlens.models.classifier import build_backbone

        self.backbone, self.stem_reduction, self.pretrained_info = build_backbone(backbone, in_chans, image_size, small_input, pretrained)
        self.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        levels = len(self.backbone.feature_info)
        bad = [i for i in patch_layers if not 0 <= int(i) < levels]
        if bad or not patch_layers:
            raise ValueError(f"model.patch_layers {list(patch_layers)}: backbone {backbone!r} has feature levels 0..{levels - 1}")
        self.patch_layers = sorted(int(i) for i in patch_layers)
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        self.memory_size = int(memory_size)
        self.feature_dim = sum(int(self.backbone.feature_info[i]["num_chs"]) for i in self.patch_layers)
        if not (isinstance(patch_position, (int, float)) and not isinstance(patch_position, bool) and 0 <= patch_position <= 100):
            raise ValueError(f"task_options.patch_position {patch_position!r}: expected a number in 0..100")
        self.patch_position = float(patch_position)
        #: memory columns: the features, then (row, column) scaled by ``pos_scale`` when ``patch_position`` > 0
        self.memory_dim = self.feature_dim + (2 if self.patch_position > 0 else 0)
        self.register_buffer("memory", torch.zeros(0, self.memory_dim))
        if self.patch_position > 0:  # set by fill_memory: patch_position x the spread of the memory's features
            self.register_buffer("pos_scale", torch.zeros(()))

    def train(self, mode: bool = True) -> PatchCoreDetector:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm statistics are the pretrained ones, always
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "memory"
        if key in state_dict and state_dict[key].ndim == 2 and state_dict[key].shape[1] == self.memory_dim:
            self.memory = torch.empty_like(state_dict[key], device=self.memory.device)  # the bank's size is data-dependent
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch descriptors (N, feature_dim, h, w) at the finest chosen level's resolution."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (N, {self.in_chans}, H, W), got {tuple(x.shape)}; images must go through the bundle's preprocessing")
        if self.input_norm == "image":
            x = standardize_images(x)
        feats = self.backbone.forward_intermediates(x, indices=self.patch_layers, intermediates_only=True)
        size = feats[0].shape[-2:]
        out = []
        for f in feats:
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)  # local neighbourhood
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)

    @staticmethod
    def positions(n: int, h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
        """(row, column) of every patch in [0, 1], in the order of :meth:`flat_patches`: (n * h * w, 2)."""
        rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, h * w, 2)
        return grid.expand(n, -1, -1).reshape(n * h * w, 2)

    def flat_patches(self, feats: torch.Tensor) -> torch.Tensor:
        """Patch features (N, C, h, w) -> rows (N * h * w, C), with the patches' (row, column) in [0, 1] as two more
        columns when ``patch_position`` > 0 (scaled later, by :meth:`fill_memory`)."""
        n, c, h, w = feats.shape
        flat = feats.float().permute(0, 2, 3, 1).reshape(-1, c).cpu()
        return torch.cat([flat, self.positions(n, h, w)], dim=1) if self.patch_position > 0 else flat

    @torch.no_grad()
    def fill_memory(self, feats: torch.Tensor | Sequence[torch.Tensor] | PatchReservoir, seed: int = 0) -> None:
        """Set the memory from patch features (N, C, h, w) of normal images (or a list of such batches, or a
        :class:`PatchReservoir` of patch rows), coreset-thinned."""
        if isinstance(feats, PatchReservoir):
            flat = feats.rows()
        else:
            if not isinstance(feats, torch.Tensor):
                feats = torch.cat([f.float().cpu() for f in feats])
            flat = self.flat_patches(feats)
        if len(flat) == 0:
            raise ValueError("patchcore: no normal training patches to fill the memory with")
        if self.patch_position > 0:  # place weighs w x the features' spread (root mean squared distance to their mean)
            f = flat[:, : self.feature_dim]
            spread = float((f - f.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt())
            self.pos_scale = torch.tensor(self.patch_position * spread, device=self.memory.device)
            flat = torch.cat([f, flat[:, self.feature_dim :] * float(self.pos_scale)], dim=1)
        self.memory = flat[greedy_coreset(flat, self.memory_size, seed)].contiguous().to(self.memory.device)

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each patch to its nearest memory row, (N, 1, h, w)."""
        if self.memory.shape[0] == 0:
            raise RuntimeError("patchcore: the memory bank is empty; train the model (one pass over normal images) first")
        f = self.patch_features(x).float()
        n, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(n, h * w, c)
        if self.patch_position > 0:
            pos = self.positions(1, h, w, q.device).reshape(1, h * w, 2) * self.pos_scale.to(q.dtype)
            q = torch.cat([q, pos.expand(n, -1, -1)], dim=-1)
        mem = self.memory.float()
        # ||q - m||^2 = ||q||^2 - 2 q.m + ||m||^2, as matmuls (exports to ONNX, no cdist)
        d2 = q.pow(2).sum(-1, keepdim=True) - 2.0 * q @ mem.t() + mem.pow(2).sum(-1)[None, None, :]
        d = d2.min(dim=-1).values.clamp_min(0.0).sqrt()
        return d.reshape(n, 1, h, w)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        d = self.patch_distances(x)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)


@MODELS.register("patchcore")
def _make_patchcore(**kw: Any) -> nn.Module:
    return PatchCoreDetector(**kw)
