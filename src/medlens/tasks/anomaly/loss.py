"""Reconstruction losses of the autoencoders: MSE, or MSE + (1 - SSIM)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medlens.models.autoencoder import ScoreSpec, ssim_map
from medlens.registry import Registry

RECON_LOSSES: Registry = Registry("reconstruction loss")


class ReconstructionLoss(nn.Module):
    """Mean squared error, optionally plus ``ssim_weight * (1 - SSIM)``, per image and averaged.

    Args:
        ssim_weight: weight of the SSIM term (0: plain MSE).
        spec: the standardisation (SSIM is computed on [0, 1] pixels) and the SSIM window.

    Example:
        >>> loss = ReconstructionLoss(ssim_weight=1.0)
        >>> float(loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)))
        0.0
    """

    def __init__(self, ssim_weight: float = 0.0, spec: ScoreSpec | None = None) -> None:
        super().__init__()
        self.ssim_weight = float(ssim_weight)
        self.spec = spec or ScoreSpec()

    def per_sample(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Loss per image, (B,)."""
        loss = (recon.float() - x.float()).pow(2).flatten(1).mean(dim=1)
        if self.ssim_weight > 0:
            sp = self.spec
            s = ssim_map(sp.to_pixels(recon), sp.to_pixels(x), 1.0, sp.ssim_window).flatten(1).mean(dim=1)
            loss = loss + self.ssim_weight * (1.0 - s)
        return loss

    def forward(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.per_sample(recon, x).mean()


@RECON_LOSSES.register("mse")
def _mse(**kw: Any) -> ReconstructionLoss:
    return ReconstructionLoss(0.0, **kw)


@RECON_LOSSES.register("mse_ssim")
def _mse_ssim(**kw: Any) -> ReconstructionLoss:
    return ReconstructionLoss(1.0, **kw)


def create_reconstruction_loss(name: str, **kw: Any) -> ReconstructionLoss:
    """``mse`` or ``mse_ssim`` (``auto`` means ``mse``); any other name is an error listing the valid ones.

    Example:
        >>> create_reconstruction_loss("mse_ssim").ssim_weight
        1.0
    """
    return RECON_LOSSES.create("mse" if name == "auto" else name, **kw)
