"""Image + metadata fusion: the backbone's pooled features concatenated with an MLP over patient metadata.

::

    image ──backbone.forward_features──► feature map ──pool──► (B, F) ─┐
                                                                      ├─ concat ─► dropout ─► linear head ─► logits
    metadata (B, M) ──[embeddings]──► MLP (Linear, BatchNorm, ReLU, Dropout)* ─► (B, H) ─┘

``forward_features(x)`` is the image feature map only, so Grad-CAM hooks the image branch exactly as for
:class:`~medlens.models.classifier.ImageClassifier`. ``forward(x, metadata)`` takes the encoded metadata of
:class:`medlens.data.metadata.MetadataEncoder`; with ``metadata=None`` every field is treated as missing (the
encoder's all-missing row, stored in the architecture as ``meta_missing``), so tools that call ``model(x)``
(Grad-CAM, ONNX tracing) still work. :class:`MetadataBound` fixes the metadata of a batch for such tools.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medlens.models.classifier import ImageClassifier
from medlens.models.registry import MODELS


def embedding_dim(cardinality: int) -> int:
    """Embedding width for a categorical field with ``cardinality`` indices (fastai's rule of thumb, capped at 16)."""
    return int(max(2, min(16, round(1.6 * cardinality**0.56))))


def metadata_mlp(in_dim: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
    """``(Linear -> BatchNorm1d -> ReLU -> Dropout)`` per hidden size; empty ``hidden`` passes input through."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, int(h)), nn.BatchNorm1d(int(h)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = int(h)
    return nn.Sequential(*layers)


class FusionClassifier(ImageClassifier):
    """A timm image backbone fused with an MLP over encoded metadata, then one linear task head.

    Args:
        meta_dim: width of the encoded metadata (``MetadataEncoder.dim``).
        meta_hidden: MLP hidden sizes (default [128, 64]).
        meta_dropout: dropout after each MLP block.
        meta_cardinalities: ``embedding`` encoding: indices per categorical field; those fields are the last
            ``len(meta_cardinalities)`` columns of the metadata and are embedded before the MLP.
        meta_missing: the encoding of an all-missing row (used when ``metadata`` is None); zeros by default.
        **image_kw: :class:`~medlens.models.classifier.ImageClassifier` arguments (backbone, num_outputs, ...).

    Example:
        >>> m = FusionClassifier(backbone="resnet10t", num_outputs=3, in_chans=3, image_size=32, meta_dim=5)
        >>> m.eval()(torch.zeros(2, 3, 32, 32), torch.zeros(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        meta_dim: int,
        meta_hidden: Sequence[int] = (128, 64),
        meta_dropout: float = 0.2,
        meta_cardinalities: Sequence[int] | None = None,
        meta_missing: Sequence[float] | None = None,
        **image_kw,
    ) -> None:
        super().__init__(**image_kw)
        cards = [int(c) for c in (meta_cardinalities or [])]
        if meta_dim < 1:
            raise ValueError(f"fusion model: meta_dim must be >= 1 (got {meta_dim})")
        if len(cards) > meta_dim:
            raise ValueError(f"fusion model: {len(cards)} embedded fields but meta_dim is {meta_dim}")
        if meta_missing is not None and len(meta_missing) != meta_dim:
            raise ValueError(f"fusion model: meta_missing has {len(meta_missing)} values, meta_dim is {meta_dim}")
        self.meta_dim = int(meta_dim)
        self.num_dense = self.meta_dim - len(cards)
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim(c)) for c in cards)
        mlp_in = self.num_dense + sum(e.embedding_dim for e in self.embeddings)
        self.meta_mlp = metadata_mlp(mlp_in, list(meta_hidden), meta_dropout)
        meta_out = int(meta_hidden[-1]) if len(meta_hidden) else mlp_in
        missing = torch.zeros(self.meta_dim) if meta_missing is None else torch.as_tensor(list(meta_missing), dtype=torch.float32)
        self.register_buffer("meta_missing", missing.float(), persistent=False)  # rebuilt from the architecture
        self.head = nn.Linear(self.num_features + meta_out, self.head.out_features)

    def encode_metadata(self, metadata: torch.Tensor) -> torch.Tensor:
        """Encoded metadata (B, meta_dim) -> MLP features (B, H)."""
        if metadata.ndim != 2 or metadata.shape[1] != self.meta_dim:
            raise ValueError(f"fusion model: metadata must have shape (batch, {self.meta_dim}), got {tuple(metadata.shape)}")
        metadata = metadata.float()
        parts = [metadata[:, : self.num_dense]]
        for j, emb in enumerate(self.embeddings):
            idx = metadata[:, self.num_dense + j].round().long().clamp(0, emb.num_embeddings - 1)
            parts.append(emb(idx))
        return self.meta_mlp(torch.cat(parts, dim=1))

    def forward_head(self, feats: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        img = self.dropout(self.pool(feats))
        if metadata is None:
            metadata = self.meta_missing.to(img.dtype).expand(img.shape[0], -1)
        meta = self.encode_metadata(metadata.to(img.device))
        return self.head(torch.cat([img, meta.to(img.dtype)], dim=1))


class MetadataBound(nn.Module):
    """``model(x)`` with the metadata fixed, for tools that call a network with images only (Grad-CAM).

    ``forward_features`` and ``backbone`` are the wrapped model's, so target layers are found as usual.

    Example:
        >>> bound = MetadataBound(model, torch.from_numpy(encoder.transform_rows([{"age": 60}])))  # doctest: +SKIP
        >>> GradCAM(bound, [bound.backbone.layer4[-1]])  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, metadata: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.metadata = metadata

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.metadata
        if m is not None:
            m = m.to(x.device)
            if m.shape[0] == 1 and x.shape[0] > 1:
                m = m.expand(x.shape[0], -1)
        return self.model(x, m)


@MODELS.register("fusion")
def _make_fusion(**kw) -> nn.Module:
    return FusionClassifier(**kw)
