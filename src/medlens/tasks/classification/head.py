"""The classification inference head (imports torch; the ONNX runtime never needs it)."""

from __future__ import annotations

from torch import nn


class ClassifierHead(nn.Module):
    """``(image, metadata) -> logits``: the graph the predictors run and ONNX exports.

    With ``with_features`` it returns ``(logits, pooled features)`` from one pass through the backbone: the
    features the out-of-distribution gate scores (``medlens.ood``). With ``stages`` as well, the features are the
    channel means and standard deviations of each earlier stage followed by the pooled features (``ImageClassifier.forward_with_stages``).
    """

    def __init__(self, model: nn.Module, with_metadata: bool, with_features: bool = False, stages: bool = False) -> None:
        super().__init__()
        self.model = model
        self.with_metadata = with_metadata
        self.with_features = with_features
        self.stages = stages

    def forward(self, image, metadata=None):
        meta = metadata if self.with_metadata else None
        if not self.with_features:
            return self.model(image, meta)
        if self.stages:
            fmap, feats = self.model.forward_with_stages(image)
            return self.model.forward_head(fmap, meta), feats
        fmap = self.model.forward_features(image)
        return self.model.forward_head(fmap, meta), self.model.pool(fmap)
