"""The anomaly inference head: reconstruct, error map, reduce to one score (imports torch)."""

from __future__ import annotations

from torch import nn

from medlens.models.autoencoder import ScoreSpec, error_map, scores_from_error_maps


class AnomalyScoreHead(nn.Module):
    """``(image, metadata) -> anomaly score (N, 1)``: reconstruct, error map, reduce. Exported to ONNX as is."""

    def __init__(self, model: nn.Module, spec: ScoreSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, image, metadata=None):  # noqa: ARG002 - autoencoders use images only
        maps = error_map(image, self.model(image), self.spec)
        return scores_from_error_maps(maps, self.spec)[:, None]


class AnomalyMapHead(AnomalyScoreHead):
    """``(image, metadata) -> (anomaly score (N, 1), error map (N, 1, H, W))``: the score head that also returns the map
    the score reduces, so ONNX Runtime draws the same error map as PyTorch."""

    def forward(self, image, metadata=None):  # noqa: ARG002
        maps = error_map(image, self.model(image), self.spec)
        return scores_from_error_maps(maps, self.spec)[:, None], maps
