"""Autoencoders for unsupervised anomaly detection, as plain ``nn.Module``s, plus the scoring functions.

Two networks, both ``forward(x, metadata=None) -> reconstruction`` with the input's shape:

* :class:`UNetAutoencoder` (``type: unet_ae``): a convolutional encoder-decoder with a dense latent vector and
  U-Net skip connections from encoder to decoder (``skip_levels``; default: the deepest level only). Skips at
  fine resolutions let the network copy its input and reconstruct anomalies as well as normal tissue (on
  PneumoniaMNIST, validation AUROC 0.69 with skips at 14x14 and 7x7, 0.89 at 7x7 only, 0.93 for the reversed AE
  without skips), so by default only the coarsest map is passed across.
* :class:`ReversedAutoencoder` (``type: reversed_ae``): asymmetric -- a deep encoder (two convolutions per
  stage) and a light decoder (one per stage) with NO skip connections: everything the decoder draws has to pass
  through the ``latent_dim``-sized bottleneck, so it cannot copy what it has not learned from normal images.

Scores (pure torch, used by training, :class:`medlens.inference.Predictor`, explain and serve):
:func:`error_map` is the per-pixel squared error (or local SSIM dissimilarity) averaged over channels,
``(N, 1, H, W)`` at the input size; :func:`anomaly_scores` reduces it to one number per image (mean, or a high
percentile). :class:`ScoreSpec` holds these choices and travels in the bundle manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlens.models.registry import MODELS

SCORE_METHODS = ("mean", "percentile")
ERROR_MAPS = ("mse", "ssim", "distance")  # distance: the model outputs the map (feature detectors)


def _conv_block(cin: int, cout: int, n_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


def _down(cin: int, cout: int) -> nn.Sequential:
    """Stride-2 3x3 convolution: H -> ceil(H / 2)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


def level_sizes(image_size: int, depth: int) -> list[int]:
    """Feature-map side length at each level 0..depth (stride-2 convs with padding 1 round up)."""
    sizes = [int(image_size)]
    for _ in range(depth):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def level_channels(width: int, depth: int, max_mult: int = 8) -> list[int]:
    """Channels at each level 0..depth: ``width * 2**level``, capped at ``width * max_mult``."""
    return [width * min(2**i, max_mult) for i in range(depth + 1)]


class _Encoder(nn.Module):
    """Stem at full resolution, then ``depth`` stride-2 stages; returns the features of every level."""

    def __init__(self, in_chans: int, chans: list[int], convs_per_stage: int) -> None:
        super().__init__()
        self.stem = _conv_block(in_chans, chans[0], convs_per_stage)
        self.stages = nn.ModuleList(
            nn.Sequential(_down(chans[i], chans[i + 1]), _conv_block(chans[i + 1], chans[i + 1], convs_per_stage - 1 if convs_per_stage > 1 else 1))
            for i in range(len(chans) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats


class _Bottleneck(nn.Module):
    """Flatten the deepest feature map into a ``latent_dim`` vector and back (the information bottleneck)."""

    def __init__(self, channels: int, side: int, latent_dim: int) -> None:
        super().__init__()
        self.shape = (channels, side, side)
        flat = channels * side * side
        self.encode = nn.Linear(flat, latent_dim)
        self.decode = nn.Sequential(nn.Linear(latent_dim, flat), nn.LeakyReLU(0.1, inplace=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x.flatten(1))
        return z, self.decode(z).view(x.shape[0], *self.shape)


class _AutoencoderBase(nn.Module):
    """Shared constructor checks and the ``encode``/``decode`` protocol."""

    def __init__(self, in_chans: int, image_size: int, depth: int, width: int, latent_dim: int) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if image_size < 2**depth:
            raise ValueError(f"image_size {image_size} is too small for depth {depth} (needs >= {2**depth} px)")
        self.in_chans = int(in_chans)
        self.image_size = int(image_size)
        self.depth = int(depth)
        self.width = int(width)
        self.latent_dim = int(latent_dim)
        self.chans = level_channels(width, depth)
        self.sizes = level_sizes(image_size, depth)
        self.bottleneck = _Bottleneck(self.chans[-1], self.sizes[-1], latent_dim)
        self.head = nn.Conv2d(self.chans[0], in_chans, 1)  # linear output: inputs are standardised, not in [0, 1]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(
                f"expected input (N, {self.in_chans}, {self.image_size}, {self.image_size}), got {tuple(x.shape)}; "
                "images must go through the bundle's preprocessing"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent vector (N, latent_dim)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        raise NotImplementedError


class UNetAutoencoder(_AutoencoderBase):
    """Encoder-decoder with a dense latent and U-Net skip connections.

    Args:
        in_chans: input channels (1 grey, 3 colour).
        image_size: square input side in pixels (fixes the size of the dense latent layer).
        depth: number of stride-2 stages (28 px: 3 gives a 4x4 map before the latent).
        width: channels of the first stage; doubled per stage (capped at 8x).
        latent_dim: size of the latent vector.
        skip_levels: encoder levels (0 = full resolution, ``depth - 1`` = deepest before the latent) whose
            features are concatenated into the decoder. Default: ``[depth - 1]`` (see the module docstring);
            ``[]`` gives a plain convolutional autoencoder.

    Example:
        >>> m = UNetAutoencoder(in_chans=1, image_size=28, depth=3, width=8, latent_dim=16)
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self, in_chans: int = 1, image_size: int = 28, depth: int = 3, width: int = 32, latent_dim: int = 128,
        skip_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__(in_chans, image_size, depth, width, latent_dim)
        skips = [depth - 1] if skip_levels is None else sorted({int(s) for s in skip_levels})
        bad = [s for s in skips if not 0 <= s < depth]
        if bad:
            raise ValueError(f"skip_levels {bad} out of range 0..{depth - 1}")
        self.skip_levels = skips
        c = self.chans
        self.encoder = _Encoder(in_chans, c, 2)
        # decoder stage for level l (depth-1 .. 0): upsample level l+1 -> conv to c[l] -> concat skip -> block
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c[lvl + 1], c[lvl], 3, padding=1, bias=False), nn.BatchNorm2d(c[lvl]), nn.LeakyReLU(0.1, inplace=True))
            for lvl in range(depth)
        )
        self.fuse = nn.ModuleList(_conv_block(c[lvl] * (2 if lvl in skips else 1), c[lvl], 2) for lvl in range(depth))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.bottleneck(self.encoder(x)[-1])[0]

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        self._check_input(x)
        feats = self.encoder(x)
        _, h = self.bottleneck(feats[-1])
        for lvl in range(self.depth - 1, -1, -1):
            h = F.interpolate(h, size=feats[lvl].shape[-2:], mode="bilinear", align_corners=False)
            h = self.up[lvl](h)
            if lvl in self.skip_levels:
                h = torch.cat([h, feats[lvl]], dim=1)
            h = self.fuse[lvl](h)
        return self.head(h)


class ReversedAutoencoder(_AutoencoderBase):
    """Asymmetric autoencoder without skip connections: a deep encoder and a light decoder.

    Every decoded pixel depends on the input only through the ``latent_dim`` vector, so the network cannot pass
    unseen structure (an opacity, a mass) through; what it has not learned from normal images comes out as
    reconstruction error.

    Args:
        in_chans: input channels.
        image_size: square input side in pixels.
        depth: stride-2 stages in the encoder (and upsampling stages in the decoder).
        width: channels of the first stage; doubled per stage (capped at 8x).
        latent_dim: size of the latent vector.
        encoder_convs: 3x3 convolutions per encoder stage (the decoder has one per stage).

    Example:
        >>> m = ReversedAutoencoder(in_chans=1, image_size=28, depth=2, width=8, latent_dim=16)
        >>> m(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, in_chans: int = 1, image_size: int = 28, depth: int = 3, width: int = 32, latent_dim: int = 128, encoder_convs: int = 3) -> None:
        super().__init__(in_chans, image_size, depth, width, latent_dim)
        c = self.chans
        self.encoder = _Encoder(in_chans, c, max(1, int(encoder_convs)))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c[lvl + 1], c[lvl], 3, padding=1, bias=False), nn.BatchNorm2d(c[lvl]), nn.LeakyReLU(0.1, inplace=True))
            for lvl in range(depth)
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.bottleneck(self.encoder(x)[-1])[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent vectors (N, latent_dim) -> images: the only path from input to output."""
        h = self.bottleneck.decode(z).view(z.shape[0], *self.bottleneck.shape)
        for lvl in range(self.depth - 1, -1, -1):
            side = self.sizes[lvl]
            h = self.up[lvl](F.interpolate(h, size=(side, side), mode="bilinear", align_corners=False))
        return self.head(h)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return self.decode(self.encode(x))


@MODELS.register("unet_ae")
def _make_unet_ae(**kw: Any) -> nn.Module:
    return UNetAutoencoder(**kw)


@MODELS.register("reversed_ae")
def _make_reversed_ae(**kw: Any) -> nn.Module:
    return ReversedAutoencoder(**kw)


# ------------------------------------------------------------------------------------------ scoring
@dataclass(frozen=True)
class ScoreSpec:
    """How a reconstruction becomes a pixel error map and an image score (stored in the bundle manifest).

    Attributes:
        error_map: ``mse`` (squared error) or ``ssim`` (local structural dissimilarity ``(1 - SSIM) / 2``).
        method: ``mean`` of the error map, or its ``percentile``-th value.
        percentile: for ``method: percentile`` (e.g. 99: the 1 % worst pixels decide).
        mean: per-channel mean of the input standardisation (the bundle's preprocessing), [0, 1] units.
        std: per-channel standard deviation of it. SSIM is computed on ``x * std + mean``, i.e. on [0, 1]
            pixels: its luminance term assumes non-negative intensities, which standardised inputs are not.
        ssim_window: side of the Gaussian SSIM window in pixels (odd).
    """

    error_map: str = "mse"
    method: str = "mean"
    percentile: float = 99.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    ssim_window: int = 7

    def __post_init__(self) -> None:
        if self.error_map not in ERROR_MAPS:
            raise ValueError(f"unknown anomaly map {self.error_map!r}; valid: {', '.join(ERROR_MAPS)}")
        if self.method not in SCORE_METHODS:
            raise ValueError(f"unknown anomaly score {self.method!r}; valid: {', '.join(SCORE_METHODS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ScoreSpec:
        d = dict(d or {})
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**{k: d[k] for k in ("error_map", "method", "percentile", "mean", "std", "ssim_window") if k in d})

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised model input (N, C, H, W) -> [0, 1] pixel units."""
        c = x.shape[1]
        mean = torch.tensor(self.mean if len(self.mean) == c else self.mean[:1] * c, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std if len(self.std) == c else self.std[:1] * c, dtype=torch.float32, device=x.device)
        return x.float() * std.view(1, c, 1, 1) + mean.view(1, c, 1, 1)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float32) - size // 2) ** 2) / (2.0 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 7) -> torch.Tensor:
    """Local SSIM (Wang et al. 2004; Gaussian window, sigma 1.5, K1 0.01, K2 0.03) per pixel and channel.

    Borders are reflect-padded so the map has the input's size: (N, C, H, W) -> (N, C, H, W), values <= 1.

    Example:
        >>> x = torch.rand(2, 1, 16, 16)
        >>> bool(torch.allclose(ssim_map(x, x), torch.ones(2, 1, 16, 16), atol=1e-4))
        True
    """
    if x.shape != y.shape:
        raise ValueError(f"SSIM inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    window = int(min(window, x.shape[-1], x.shape[-2]))
    window -= 1 - window % 2  # odd
    c = x.shape[1]
    k = _gaussian_window(window).to(x.device, torch.float32).expand(c, 1, window, window)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), k, groups=c)

    x, y = x.float(), y.float()
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def error_map(x: torch.Tensor, recon: torch.Tensor, spec: ScoreSpec | None = None) -> torch.Tensor:
    """Pixel error map at the input's size: (N, C, H, W) -> (N, 1, H, W), averaged over channels.

    ``mse``: squared error in model-input units; ``ssim``: ``(1 - SSIM) / 2`` in [0, 1]; ``distance``: ``recon``
    is already the map (a feature detector's patch distances, see :mod:`medlens.models.patchcore`).

    Example:
        >>> error_map(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).shape
        torch.Size([1, 1, 4, 4])
    """
    spec = spec or ScoreSpec()
    if spec.error_map == "distance":  # a feature detector's output already is the (N, 1, H, W) anomaly map
        if recon.ndim != 4 or recon.shape[1] != 1 or recon.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"a distance map must be (N, 1, {x.shape[-2]}, {x.shape[-1]}), got {tuple(recon.shape)}")
        return recon.float()
    if x.shape != recon.shape:
        raise ValueError(f"input {tuple(x.shape)} and reconstruction {tuple(recon.shape)} differ in shape")
    if spec.error_map == "ssim":
        s = ssim_map(spec.to_pixels(x), spec.to_pixels(recon), 1.0, spec.ssim_window)
        return ((1.0 - s) / 2.0).mean(dim=1, keepdim=True)
    return (x.float() - recon.float()).pow(2).mean(dim=1, keepdim=True)


def scores_from_error_maps(maps: torch.Tensor, spec: ScoreSpec | None = None) -> torch.Tensor:
    """One anomaly score per image from (N, 1, H, W) error maps: their mean, or their ``percentile``-th value.

    Example:
        >>> scores_from_error_maps(torch.arange(4.0).view(1, 1, 2, 2), ScoreSpec(method="percentile", percentile=100.0))
        tensor([3.])
    """
    spec = spec or ScoreSpec()
    flat = maps.flatten(1).float()
    if spec.method == "percentile":
        # torch.quantile's linear interpolation, written with sort so the ONNX export computes the same score
        n = flat.shape[1]
        pos = (spec.percentile / 100.0) * (n - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        s = torch.sort(flat, dim=1).values
        return s[:, lo] + (s[:, hi] - s[:, lo]) * (pos - lo)
    return flat.mean(dim=1)


@torch.no_grad()
def anomaly_scores(model: nn.Module, x: torch.Tensor, spec: ScoreSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruct a preprocessed batch and score it: (N, C, H, W) -> (scores (N,), error maps (N, 1, H, W)).

    Example:
        >>> m = ReversedAutoencoder(1, 28, 2, 8, 16).eval()
        >>> s, maps = anomaly_scores(m, torch.zeros(3, 1, 28, 28))
        >>> s.shape, maps.shape
        (torch.Size([3]), torch.Size([3, 1, 28, 28]))
    """
    maps = error_map(x, model(x), spec)
    return scores_from_error_maps(maps, spec), maps
