"""The classification inference head (imports torch; the ONNX runtime never needs it)."""

from __future__ import annotations

from torch import nn


class ClassifierHead(nn.Module):
    """``(image, metadata) -> logits``: the graph the predictors run and ONNX exports."""

    def __init__(self, model: nn.Module, with_metadata: bool) -> None:
        super().__init__()
        self.model = model
        self.with_metadata = with_metadata

    def forward(self, image, metadata=None):
        return self.model(image, metadata if self.with_metadata else None)
