"""``medlens.pretrain(cfg)``: self-supervised (SimCLR) pretraining of the config's backbone on its images.

Labels are ignored. The rows are those of ``pretrain.rows`` -- by default train + validation of the config's own
split (``medlens.data.splits``); the test split is never read. Every image is seen as two randomly augmented
views; a projection head maps the backbone's pooled features to ``pretrain.proj_dim`` and the NT-Xent loss
(Chen et al. 2020) pulls the two views of an image together and pushes the other images of the batch away.

Augmentations are chosen to keep medical images medical: a crop of 60-100 % of the area resized back, a small
affine (rotation up to 10 degrees, shift up to 6 %), brightness/contrast jitter, Gaussian blur, and horizontal
flips only when ``pretrain.flip`` is set (laterality means something on a chest X-ray); no hue or colour
changes. ``pretrain.strength`` scales every range (0: identical views).

Training runs through the one engine (``engine.fit``): the same checkpoints (``checkpoints/last.ckpt``, atomic,
``weights_only`` reads), ``--resume`` / ``trainer.auto_resume``, trackers and progress bar as ``medlens train``.
The run folder (``output.dir / pretrain.name``, default ``<name>-pretrain``) ends with::

    backbone.safetensors   the backbone's tensors (stem adapted to the image size), header metadata naming it
    backbone.json          backbone, in_chans, image_size, stem_reduction, epochs, rows, sha256

``model.pretrained: RUN/backbone.safetensors`` then loads it for fine-tuning (classifier) or for the feature
anomaly detector (``task_options.detector: patchcore``); a file of another backbone, channel count or stem is refused.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.data.dataset import Batch
from medlens.engine.module import OptimSettings, TaskModule

log = logging.getLogger("medlens.pretrain")


# ------------------------------------------------------------------------------------------ augmentation
@dataclass(frozen=True)
class ViewAugment:
    """Ranges of the two-view augmentation (``strength`` 1); every range is multiplied by ``strength``.

    Attributes:
        strength: 0 (identical views) .. 2.
        flip: random horizontal flips.
        min_area: smallest crop, as a fraction of the image area, at strength 1 (0.6: crops of 60-100 %).
        max_rotate_deg: rotation range in degrees.
        max_shift: translation range as a fraction of the image side.
        brightness: additive jitter in standardised units.
        contrast: multiplicative jitter (1 +- contrast).
        blur_prob: probability of a Gaussian blur (sigma 0.1-1.0 px).
    """

    strength: float = 1.0
    flip: bool = False
    min_area: float = 0.6
    max_rotate_deg: float = 10.0
    max_shift: float = 0.06
    brightness: float = 0.4
    contrast: float = 0.4
    blur_prob: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random view of a standardised batch (N, C, H, W) (same shape)."""
        s = float(self.strength)
        if s <= 0:
            return x
        n, dev = x.shape[0], x.device

        def u(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(n, generator=generator)).to(dev)

        area = u(1.0 - min(0.9, (1.0 - self.min_area) * s), 1.0)
        scale = area.sqrt()  # side of the crop relative to the image
        ang = u(-1.0, 1.0) * math.radians(self.max_rotate_deg * s)
        room = (1.0 - scale)  # the crop stays inside the image
        tx = u(-1.0, 1.0) * (room + self.max_shift * s)
        ty = u(-1.0, 1.0) * (room + self.max_shift * s)
        sx = scale * (torch.where(u(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else 1.0)
        cos, sin = torch.cos(ang), torch.sin(ang)
        theta = torch.stack([torch.stack([sx * cos, -scale * sin, tx], 1), torch.stack([sx * sin, scale * cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        c = 1.0 + u(-1.0, 1.0) * self.contrast * s
        b = u(-1.0, 1.0) * self.brightness * s
        mean = y.mean(dim=(1, 2, 3), keepdim=True)  # the same jitter on every channel: no colour shift
        y = (y - mean) * c.view(n, 1, 1, 1) + mean + b.view(n, 1, 1, 1)
        blur = u(0.0, 1.0) < self.blur_prob * min(1.0, s)
        if bool(blur.any()):
            sigma = 0.1 + 0.9 * torch.rand(1, generator=generator).item() * min(1.0, s)
            r = max(1, int(math.ceil(2 * sigma)))
            k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype, device=dev) ** 2) / (2 * sigma**2))
            k = k / k.sum()
            ch = y.shape[1]
            yb = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(ch, 1, 1, 1), groups=ch)
            yb = F.conv2d(F.pad(yb, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(ch, 1, 1, 1), groups=ch)
            y = torch.where(blur.view(n, 1, 1, 1), yb, y)
        return y


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over 2N views (each view's positive is its twin).

    Example:
        >>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> float(nt_xent(z, z, 0.1)) < float(nt_xent(z, torch.randn(4, 8), 0.1))
        True
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLRNet(nn.Module):
    """Backbone (``backbone.*``, what is kept) + projection head (``head.*``, dropped after pretraining)."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 64, input_norm: str = "dataset") -> None:
        super().__init__()
        self.backbone = backbone
        self.input_norm = input_norm  # "image": the views are standardised per image, as the patchcore detector will see them
        width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        if self.input_norm == "image":
            from medlens.models.patchcore import standardize_images

            x = standardize_images(x)
        return self.head(self.backbone(x))


class SimCLRModule(TaskModule):
    """Two views per image, NT-Xent; validation: the same loss on fixed (seeded) views of the validation rows."""

    def __init__(self, model: SimCLRNet, label_space: Any, optim: OptimSettings, augment: ViewAugment, temperature: float, seed: int = 0) -> None:
        super().__init__(model, label_space, nn.Identity(), optim, "loss", seed, monitor_mode="min")
        self.augment = augment
        self.temperature = float(temperature)

    def pair_loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return nt_xent(self.model(self.augment(x, generator)), self.model(self.augment(x, generator)), self.temperature)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None or len(batch) < 2:  # NT-Xent needs at least one negative
            return None
        loss = self.pair_loss(batch.images)
        self.record_train_loss(loss, len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"loss": []}
        self._val_gen = torch.Generator().manual_seed(self.seed + 1)  # the same views every epoch: comparable losses

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None or len(batch) < 2:
            return
        self._val["loss"].append(torch.stack([self.pair_loss(batch.images, self._val_gen).detach(), torch.tensor(float(len(batch)), device=batch.images.device)]))

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("loss"):
            return
        v = torch.stack(self._val["loss"])
        logs = {"val/loss": float((v[:, 0] * v[:, 1]).sum() / v[:, 1].sum())}
        self.log_dict(logs, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.history.append(self.history_row(logs))


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass
class PretrainResult:
    """What ``medlens pretrain`` produced."""

    run_dir: Path
    weights: Path
    info: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0


def input_norm_of(cfg: Any) -> str:
    """How the config's task normalises network inputs (``dataset`` or ``image``); the views are normalised alike."""
    from medlens.tasks import task_for_config

    cls = task_for_config(cfg)
    return cls(cfg.data.task or cls.kinds[0]).input_norm(cfg)


def pretrain_rows(cfg: Any, table: Any, splits: Any) -> np.ndarray:
    """The rows ``pretrain.rows`` names (never a test row): ``train_val``, ``train``, or ``task_training``."""
    from medlens.tasks import task_of

    which = cfg.pretrain.rows
    if which == "task_training":
        rows = task_of(table.label_space).training_rows(table, splits.train)
    elif which == "train":
        rows = np.asarray(splits.train)
    else:
        rows = np.concatenate([splits.train, splits.val])
    rows = np.asarray(rows, dtype=np.int64)
    if np.intersect1d(rows, np.asarray(splits.test, dtype=np.int64)).size:  # the invariant the test figures rest on
        raise RuntimeError("pretraining rows overlap the test split")
    return rows


def write_backbone(tensors: dict[str, torch.Tensor], folder: str | Path, info: dict[str, Any]) -> Path:
    """Write ``folder/backbone.safetensors`` (atomically) with ``info`` in its header, the way ``model.pretrained`` reads it.

    ``info`` must name ``backbone``, ``in_chans`` and ``stem_reduction`` (checked when the file is loaded).

    Example:
        >>> net, red, _ = build_backbone("resnet10t", 1, 28)  # doctest: +SKIP
        >>> write_backbone(net.state_dict(), "runs/x", {"backbone": "resnet10t", "in_chans": 1, "stem_reduction": red})  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    from medlens.models.pretrained import MEDLENS_BACKBONE_KEY

    missing = [k for k in ("backbone", "in_chans", "stem_reduction") if k not in info]
    if missing:
        raise ValueError(f"backbone record lacks {missing}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "backbone.safetensors"
    tmp = folder / ".backbone.safetensors.tmp"
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt", MEDLENS_BACKBONE_KEY: json.dumps(info)})
    tmp.replace(out)  # never a half-written weights file under the final name
    return out


def simclr_module(cfg: Any, label_space: Any) -> tuple[SimCLRModule, int]:
    """The pretraining module of a config (backbone + projection head, views, loss, optimiser) and its stem reduction."""
    import dataclasses

    from medlens.engine.module import optim_settings
    from medlens.models.classifier import build_backbone

    p = cfg.pretrain
    backbone, red, _ = build_backbone(cfg.model.backbone, cfg.data.channels, cfg.data.image_size, cfg.model.small_input)
    optim = dataclasses.replace(optim_settings(cfg), lr=p.lr, backbone_lr=None, ema=False, mixup_alpha=0.0, cutmix_alpha=0.0,
                                scheduler="cosine" if cfg.optim.scheduler == "plateau" else cfg.optim.scheduler)
    return SimCLRModule(SimCLRNet(backbone, p.proj_dim, input_norm_of(cfg)), label_space, optim, ViewAugment(p.strength, p.flip), p.temperature, cfg.seed), red


def pretrain_run_dir(cfg: Any) -> Path:
    """``output.dir / pretrain.name`` (default ``<output.name or name>-pretrain``)."""
    from medlens.runfolder import contained_run_dir

    return contained_run_dir(cfg.output.dir, cfg.pretrain.name or f"{cfg.output.name or cfg.name or 'run'}-pretrain")


def pretrain(cfg: Any, resume: str | None = None, callbacks: list | None = None) -> PretrainResult:
    """Self-supervised pretraining of ``model.backbone`` on the config's images; writes ``backbone.safetensors``.

    Args:
        cfg: a :class:`~medlens.config.RunConfig`; ``pretrain`` sets epochs, batch size, lr, temperature,
            projection size, augmentation strength and flips; ``model`` the backbone and stem; ``data`` the source.
        resume: a checkpoint to continue from (``trainer.auto_resume`` finds ``checkpoints/last.ckpt``).
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`PretrainResult` with the run folder, the weights file and its record.

    Example:
        >>> res = pretrain(load_config("configs/pneumoniamnist.yaml"))  # doctest: +SKIP
        >>> cfg.model.pretrained = str(res.weights)  # doctest: +SKIP
    """
    import lightning as L

    from medlens._atomic import write_json_atomic, write_text_atomic
    from medlens.config import dump_config
    from medlens.data.dataset import ImageDataset, make_loader
    from medlens.data.transforms import make_transform, preprocessing_from_config
    from medlens.engine.fit import fit
    from medlens.models.pretrained import file_sha256
    from medlens.runfolder import RunLock, check_writable
    from medlens.training import prepare_data

    p = cfg.pretrain
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = pretrain_run_dir(cfg)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resume = resume or cfg.trainer.resume
    if resume is None and cfg.trainer.auto_resume and ckpt.is_file():
        resume = str(ckpt)
        log.info("auto_resume: continuing from %s", resume)
    if resume is None and not cfg.output.overwrite and ((run_dir / "backbone.safetensors").exists() or ckpt.exists()):
        raise FileExistsError(f"{run_dir} already holds a pretraining run; set output.overwrite: true, pretrain.name, or resume")
    from medlens.engine.checkpoint import read_resume

    resume = read_resume(resume)  # read once (weights only), before any data: the object the Trainer restores
    check_writable(cfg.output.dir)
    # the engine's settings for this run: pretrain's epochs/lr, nothing frozen, no EMA, checkpoints on val/loss
    run_cfg = cfg.model_copy(update={
        "trainer": cfg.trainer.model_copy(update={"max_epochs": p.epochs, "monitor": "auto", "early_stopping_patience": None}),
        "optim": cfg.optim.model_copy(update={"freeze_backbone": False, "freeze_epochs": 0, "ema": False}),
    })
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        if resume is None:
            for f in (run_dir / "checkpoints").glob("*.ckpt"):
                f.unlink()
        write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        table, splits = prepare_data(cfg)
        rows = pretrain_rows(cfg, table, splits)
        pp = preprocessing_from_config(cfg.data)
        tf = make_transform(pp, None)  # the views are made on tensors, in the module
        cache = not table.in_memory and len(table) <= 50_000 and cfg.data.image_size <= 128
        train_set = ImageDataset(table.subset(rows), tf, pp, cache=cache, on_bad_image=cfg.data.on_bad_image)
        val_set = ImageDataset(table.subset(splits.val), tf, pp, cache=cache, on_bad_image=cfg.data.on_bad_image)
        workers = cfg.data.num_workers or 0
        bs = min(p.batch_size, len(train_set))
        train_loader = make_loader(train_set, bs, True, workers, None, cfg.seed, drop_last=len(train_set) > bs)
        val_loader = make_loader(val_set, bs, False, workers)
        log.info("pretrain: %d images (%s; test split left out), %d epochs, backbone %s", len(rows), p.rows, p.epochs, cfg.model.backbone)

        module, red = simclr_module(cfg, table.label_space)
        fitted = fit(run_cfg, module, train_loader, val_loader, run_dir, ("loss", "min"), resume, callbacks)
        if not fitted.is_global_zero:
            return PretrainResult(run_dir, run_dir / "backbone.safetensors", {}, fitted.history, fitted.train_time_s)
        tensors = {k.removeprefix("backbone."): v.contiguous().clone() for k, v in fitted.state_dict.items() if k.startswith("backbone.")}
        info: dict[str, Any] = {
            "backbone": cfg.model.backbone, "in_chans": int(cfg.data.channels), "image_size": int(cfg.data.image_size),
            "small_input": cfg.model.small_input, "stem_reduction": int(red), "epochs": int(p.epochs),
            "epochs_run": len(fitted.history), "rows": p.rows, "n_images": int(len(rows)), "source": table.source,
            "method": "simclr", "batch_size": int(bs), "lr": p.lr, "temperature": p.temperature, "proj_dim": p.proj_dim, "strength": p.strength, "flip": p.flip,
            "input_norm": input_norm_of(cfg),
        }
        out = write_backbone(tensors, run_dir, info)
        info = {**info, "sha256": file_sha256(out), "file": out.name, "train_time_s": round(fitted.train_time_s, 2)}
        write_json_atomic(run_dir / "backbone.json", info)
        write_json_atomic(run_dir / "history.json", fitted.history)
        log.info("pretrain: %s (sha256 %s); fine-tune with model.pretrained: %s", out, info["sha256"][:12], out)
        return PretrainResult(run_dir, out, info, fitted.history, fitted.train_time_s)
    finally:
        lock.release()


__all__ = ["PretrainResult", "SimCLRModule", "SimCLRNet", "ViewAugment", "nt_xent", "pretrain", "pretrain_rows", "pretrain_run_dir", "simclr_module", "write_backbone"]
