"""The anomaly task's own config section (``task_options`` in the YAML): the detector, its score and threshold.

Example YAML::

    data: {kind: medmnist, flag: pneumoniamnist, task: anomaly}
    task_options:
      normal_label: normal   # the class the detector learns from
      autoencoder: unet      # unet | reversed
      anomaly_map: ssim      # pixel error map: mse | ssim
      anomaly_fpr: 0.05      # threshold: flags this fraction of validation normals
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medlens.tasks.base import TaskOptions


class AnomalyOptions(TaskOptions):
    """An autoencoder (or a PatchCore-style feature detector) trained on normal images only."""

    normal_label: str | None = None  # the class (or multi-label "no finding" name) the detector is trained on (required)
    loss: Literal["auto", "mse", "mse_ssim"] = "auto"  # reconstruction loss (auto: mse)
    autoencoder: Literal["unet", "reversed"] = "unet"
    ae_depth: int = Field(3, ge=1, le=6)
    ae_width: int = Field(32, ge=4)
    latent_dim: int = Field(128, ge=2)
    ae_skip_levels: list[int] | None = None  # U-Net AE: encoder levels with skips (0 = full res); None: deepest only
    anomaly_score: Literal["mean", "percentile"] = "mean"
    anomaly_map: Literal["mse", "ssim"] = "mse"  # pixel error map: squared error, or local SSIM dissimilarity
    score_percentile: float = Field(99.0, gt=0.0, le=100.0)
    anomaly_fpr: float = Field(0.05, gt=0.0, lt=1.0)  # threshold: this false-positive rate on val normals
    # Feature-based detection (detector: patchcore): nearest-normal-patch distances
    detector: Literal["autoencoder", "patchcore"] = "autoencoder"  # patchcore needs model.pretrained (e.g. `medlens pretrain`)
    memory_size: int = Field(4096, ge=16)  # patchcore: coreset size, normal patch features kept (bounds memory and time)
    # patchcore: most training patches the coreset chooses from (a uniform random sample when there are more): bounds
    # the fill's RAM at coreset_candidates * feature dim * 4 bytes (262144 x 384 x 4 = 400 MB for ResNet levels 2-3)
    coreset_candidates: int = Field(262144, ge=16)
    patch_layers: list[int] = Field(default_factory=lambda: [2, 3])  # patchcore: timm feature levels (2 = stride 8 in a stock ResNet)
    # patchcore: "image" standardises each image by its own mean and std inside the network (after data.mean/std), so
    # a brightness or contrast shift between cohorts or scanners does not move its features; "dataset": data.mean/std only
    input_norm: Literal["dataset", "image"] = "dataset"
    # patchcore: 0 = a patch may match a normal patch anywhere (classic PatchCore); w > 0 = each patch also carries its
    # place, weighted w x the features' spread, so it is compared mostly with normal patches from the same part of the
    # image (aligned images: chest X-rays). See benchmarks/anomaly.py
    patch_position: float = Field(0.0, ge=0.0, le=100.0)
    # patchcore: describe patches with the backbone as randomly initialised under `seed` (no model.pretrained). Off by
    # default: forgetting `medlens pretrain` is the usual mistake. On Kermany chest X-rays, random features with
    # patch_position 1 were the validation winner (benchmarks/anomaly.py, configs/anomaly_kermany.yaml)
    random_features: bool = False
