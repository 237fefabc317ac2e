"""The LightningModule base every task's module derives from, around a plain ``nn.Module``.

The network knows nothing about losses or metrics. This base owns what every task shares: the optimiser and
schedule, mixup/cutmix, EMA validation, whole-set validation across processes, the per-epoch history (with the
epoch's own training loss and learning rate) and reproducible epochs. Each task's module (``medlens.tasks.*``)
sets the targets, the activation and the epoch metrics.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from medlens.data.dataset import Batch
from medlens.data.labels import LabelSpace
from medlens.engine.distributed import first_occurrences, gather_uneven

#: metrics logged for both the raw and the EMA weights (``val/raw_<name>``, ``val/ema_<name>``) when EMA is on
EMA_SUMMARY_METRICS = ("accuracy", "f1_macro", "auroc_macro")

log = logging.getLogger("medlens.train")

#: channels-last must be this much faster in the probe to be chosen (the shared 2-core VM moves timings by ~5 %)
CHANNELS_LAST_MARGIN = 0.05


def measure_memory_formats(step: Callable[[bool], None], steps: int = 3, timer: Callable[[], float] | None = None,
                           margin: float = CHANNELS_LAST_MARGIN) -> tuple[bool, float, float]:
    """Time ``step(channels_last)`` in both memory formats and pick the faster.

    One untimed warm-up step per layout, then ``steps`` timed steps each, alternated so neither layout gets the
    quieter moment; the medians are compared. Channels-last is chosen only when its median is at least
    ``margin`` below the contiguous one: without a clear gain the usual layout stays.

    Returns:
        (use channels-last, median seconds contiguous, median seconds channels-last).

    Example:
        >>> measure_memory_formats(lambda cl: None)[0]
        False
    """
    timer = timer or time.perf_counter
    for cl in (False, True):
        step(cl)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for cl in (False, True):
            t0 = timer()
            step(cl)
            times[cl].append(timer() - t0)
    contiguous, channels_last = statistics.median(times[False]), statistics.median(times[True])
    return channels_last < contiguous * (1.0 - margin), contiguous, channels_last


def random_state(*generators: torch.Generator) -> dict[str, Any]:
    """The process's random state (Python, NumPy, torch CPU and CUDA, and ``generators``) as plain data a
    ``weights_only`` checkpoint holds."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [g.get_state() for g in generators]}


def set_random_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`random_state` returned (parts that are missing are left alone)."""
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    for g, st in zip(generators, state.get("generators", []), strict=False):
        g.set_state(st)


@dataclass
class OptimSettings:
    """Optimiser and schedule settings (the adapter :func:`optim_settings` maps the config onto these)."""

    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [30, 60])
    gamma: float = 0.1
    plateau_patience: int = 2
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    ema: bool = False
    ema_decay: float = 0.999


def optim_settings(cfg) -> OptimSettings:
    """Map ``cfg.optim`` onto :class:`OptimSettings`."""
    o = cfg.optim
    return OptimSettings(
        optimizer=o.optimizer, lr=o.lr, backbone_lr=o.backbone_lr, weight_decay=o.weight_decay, momentum=o.momentum,
        scheduler=o.scheduler, warmup_epochs=o.warmup_epochs, min_lr=o.min_lr, milestones=list(o.milestones),
        gamma=o.gamma, plateau_patience=o.plateau_patience, mixup_alpha=o.mixup_alpha, cutmix_alpha=o.cutmix_alpha,
        mix_prob=o.mix_prob, ema=o.ema, ema_decay=o.ema_decay,
    )


def mix_batch(
    images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, mixup_alpha: float, cutmix_alpha: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix on a batch; targets (B, K) with NaN for unknown.

    Targets are mixed with the same weight as the pixels, so they stay in [0, 1]. A label unknown in either
    source image is unknown in the mix (multi-label safe). Returns (images, targets, mask, lambda).
    """
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator))).beta(alpha, alpha))
    perm = torch.randperm(images.shape[0], generator=generator, device="cpu").to(images.device)
    if use_cutmix:
        h, w = images.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(0, h, (1,), generator=generator)), int(torch.randint(0, w, (1,), generator=generator))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        images = images.clone()
        images[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    else:
        images = lam * images + (1.0 - lam) * images[perm]
    t1 = torch.nan_to_num(targets, nan=0.0)
    mixed = lam * t1 + (1.0 - lam) * t1[perm]
    # A label unknown in either source is unknown in the mix, unless the second image contributes nothing.
    new_mask = mask if lam >= 1.0 else mask & mask[perm]
    mixed = torch.where(new_mask, mixed, torch.full_like(mixed, float("nan")))
    return images, mixed, new_mask, lam


class TaskModule(L.LightningModule):
    """Base LightningModule; subclasses set the task-specific targets, activation and metrics.

    Args:
        model: the network (``forward(images, metadata)`` -> logits).
        label_space: label names and task.
        loss: a loss from the task's ``create_loss`` hook.
        optim: optimiser/schedule settings.
        monitor_metric: the validation metric used for checkpoints (without the ``val/`` prefix).
        seed: the run's seed; every epoch's randomness is derived from (seed, epoch).
        monitor_mode: ``max`` or ``min`` for the monitored metric (the plateau scheduler follows it).
        channels_last: run the network in channels-last memory format (``True``), the usual contiguous one
            (``False``), or ``"auto"``: decided on the first training batch by :meth:`choose_memory_format`.
    """

    task: str = "base"

    def __init__(
        self, model: nn.Module, label_space: LabelSpace, loss: nn.Module, optim: OptimSettings, monitor_metric: str = "auroc_macro",
        seed: int = 0, monitor_mode: str = "max", channels_last: bool | str = False,
    ) -> None:
        super().__init__()
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"trainer.channels_last: {channels_last!r}; valid: true, false, auto")
        self.channels_last: bool | str = channels_last
        self.memory_format_probe: dict[str, Any] | None = None  # what "auto" measured and chose
        if channels_last is True:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.label_space = label_space
        self.loss_fn = loss
        self.optim = optim
        self.monitor_metric = monitor_metric
        self.monitor_mode = monitor_mode
        self.seed = seed
        # The EMA copy is only ever run in validation (eval mode); its parameters take no gradient.
        self.ema_model: nn.Module | None = copy.deepcopy(model) if optim.ema else None
        self._ema_seen_step = -1
        if self.ema_model is not None:
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
        self._val: dict[str, list] = {}
        self.history: list[dict[str, Any]] = []
        self.ema_better_by_epoch: dict[int, bool] = {}
        self._mix_gen = torch.Generator().manual_seed(seed)
        self._rng_pending: dict[str, Any] | None = None
        self._train_loss_sum = 0.0
        self._train_loss_n = 0
        self._epoch_lr: float | None = None  # the head's learning rate as the epoch started
        self._epoch_backbone_lr: float | None = None  # the backbone's, when it differs from the head's

    # ----------------------------------------------------------------- task specifics
    def task_targets(self, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Label-space targets (B, L) -> what the loss sees."""
        return targets, mask

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    # ----------------------------------------------------------------- steps
    def forward(self, images: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(images, metadata)

    def on_after_batch_transfer(self, batch: Batch | None, dataloader_idx: int) -> Batch | None:
        if self.channels_last is True and batch is not None and batch.images.ndim == 4:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        return batch

    # ----------------------------------------------------------------- memory format ("auto")
    def on_train_batch_start(self, batch: Batch | None, batch_idx: int) -> None:
        if self.channels_last == "auto" and batch is not None and batch.images.ndim == 4:
            self.choose_memory_format(batch)

    def choose_memory_format(self, batch: Batch, steps: int = 3) -> bool:
        """``channels_last: auto``: time a few forward+backward steps of this network on this batch in both layouts
        (:func:`measure_memory_formats`) and keep the faster; log both timings; apply it to the model and batch.

        The steps run on a copy of the network under the run's precision, inside a forked random state, so the
        probe changes no weight, gradient, batch-norm statistic or random draw of the training itself. A
        ``torch.compile``'d network is not probed (each layout would compile anew): channels-last on CUDA, where
        convolutions under mixed precision are known to prefer it, contiguous elsewhere.
        """
        images, meta = batch.images, batch.metadata
        cuda = images.is_cuda
        if hasattr(self.model, "_orig_mod"):  # torch.compile wrapper
            use, t_contig, t_cl, how = cuda, float("nan"), float("nan"), "rule (compiled network)"
        else:
            net = copy.deepcopy(self.model).train()
            try:
                context = self.trainer.precision_plugin.forward_context
            except (AttributeError, RuntimeError):  # not attached to a Trainer: float32
                context = contextlib.nullcontext

            def step(cl: bool) -> None:
                fmt = torch.channels_last if cl else torch.contiguous_format
                net.to(memory_format=fmt)
                with context():
                    out = net(images.contiguous(memory_format=fmt), meta)
                out.float().sum().backward()
                net.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize(images.device)

            with torch.random.fork_rng(devices=[images.device] if cuda else []):
                use, t_contig, t_cl = measure_memory_formats(step, steps)
            del net
            how = f"probe, {len(images)} x {tuple(images.shape[1:])}"
        self.memory_format_probe = {"channels_last": bool(use), "ms_contiguous": round(1000 * t_contig, 2),
                                    "ms_channels_last": round(1000 * t_cl, 2), "how": how}
        log.info("trainer.channels_last auto: %s (%s: contiguous %.1f ms, channels-last %.1f ms a step)",
                 "channels-last" if use else "contiguous", how, 1000 * t_contig, 1000 * t_cl)
        self.apply_memory_format(bool(use))
        if use:
            batch.images = images.contiguous(memory_format=torch.channels_last)
        try:
            self.log("channels_last", float(use), on_step=False, on_epoch=True, batch_size=len(images))  # to the trackers
        except Exception:  # pragma: no cover - not inside a Trainer loop
            pass
        return bool(use)

    def apply_memory_format(self, channels_last: bool) -> None:
        """Fix the memory format of the network (and its EMA copy); parameters keep their identity."""
        self.channels_last = channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        if self.ema_model is not None:
            self.ema_model.to(memory_format=fmt)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        images, targets, mask = batch.images, batch.targets, batch.mask
        o = self.optim
        if (o.mixup_alpha > 0 or o.cutmix_alpha > 0) and torch.rand(1, generator=self._mix_gen).item() < o.mix_prob:
            images, targets, mask, _ = mix_batch(images, targets, mask, o.mixup_alpha, o.cutmix_alpha, self._mix_gen)
        logits = self.model(images, batch.metadata)
        t, m = self.task_targets(targets, mask)
        loss = self.loss_fn(logits, t, m)
        self.record_train_loss(loss, len(batch))
        return loss

    def record_train_loss(self, loss: torch.Tensor, n: int) -> None:
        """Log the step loss and add it to this epoch's running mean (the history's ``train/loss``)."""
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self._train_loss_sum += float(loss.detach()) * n
        self._train_loss_n += n

    def current_lr(self) -> float | None:
        """The learning rate of the last parameter group (the head's), after this step's schedule."""
        try:
            opt = self.trainer.optimizers[0]
        except (AttributeError, IndexError, RuntimeError):
            return None
        return float(opt.param_groups[-1]["lr"]) if opt.param_groups else None

    def group_lrs(self) -> dict[str, float]:
        """The learning rate of each named parameter group (``backbone``, ``head``), after this step's schedule."""
        try:
            opt = self.trainer.optimizers[0]
        except (AttributeError, IndexError, RuntimeError):
            return {}
        out: dict[str, float] = {}
        for g in opt.param_groups:
            if "name" in g:
                out.setdefault(str(g["name"]), float(g["lr"]))
        return out

    def history_row(self, logs: dict[str, float]) -> dict[str, Any]:
        """One history row for the epoch being validated: its own training loss (mean so far), LR, metrics.

        ``lr`` is the head's learning rate the epoch started with (the value logged as ``lr``), not the one
        after its last scheduler step: a cosine schedule ends at ``min_lr``, which no step of the last epoch used.
        ``lr/backbone`` is the backbone's, there only when it differs from the head's (``optim.backbone_lr``).
        """
        row: dict[str, Any] = {"epoch": int(self.current_epoch), "step": int(self.global_step)}
        if self._train_loss_n:
            row["train/loss"] = self._train_loss_sum / self._train_loss_n
        lr = self._epoch_lr if self._epoch_lr is not None else self.current_lr()
        if lr is not None:
            row["lr"] = lr
        if self._epoch_backbone_lr is not None:
            row["lr/backbone"] = self._epoch_backbone_lr
        row.update(logs)
        return row

    def on_train_start(self) -> None:
        self._ema_seen_step = int(self.global_step)
        if self._rng_pending is not None:  # a resumed run: the random state where the checkpoint left it
            set_random_state(self._rng_pending, self._mix_gen)
            self._rng_pending = None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Update the average after each optimiser step (not each batch: gradient accumulation steps less often).
        if self.ema_model is not None and int(self.global_step) != self._ema_seen_step:
            self._ema_seen_step = int(self.global_step)
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (as in timm's ModelEmaV3) so early epochs are not dominated by the init
        step = self.global_step
        decay = min(self.optim.ema_decay, (1 + step) / (10 + step))
        for e, p in zip(self.ema_model.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    def on_validation_epoch_start(self) -> None:
        self._val = {"logits": [], "targets": [], "ema_probs": [], "index": []}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if batch is None:
            return
        logits = self.model(batch.images, batch.metadata)
        self._val["logits"].append(logits.float().detach())  # loss and metrics at epoch end, over the whole set
        self._val["targets"].append(batch.targets.detach())
        self._val["index"].append(batch.index.to(logits.device))
        if self.ema_model is not None:
            self._val["ema_probs"].append(self.activation(self.ema_model(batch.images, batch.metadata).float()).detach())

    def _distributed(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def _gather(self, items: list[torch.Tensor], keep: np.ndarray | None = None) -> np.ndarray:
        x = torch.cat(items) if items else torch.zeros(0)
        if self._distributed():
            x = gather_uneven(x, self.all_gather)  # every process sees the whole validation set
        x = x.cpu().numpy()
        return x if keep is None else x[keep]

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("logits"):
            return
        keep = None
        if self._distributed():  # DistributedSampler pads with repeated samples: keep each row index once
            keep = first_occurrences(self._gather(self._val["index"]))
        logits = torch.from_numpy(self._gather(self._val["logits"], keep)).to(self.device)
        targets = self._gather(self._val["targets"], keep)
        t = torch.from_numpy(targets).to(self.device)
        val_loss = float(self.loss_fn(logits, *self.task_targets(t, ~torch.isnan(t))))  # mean over all known labels
        probs = self.activation(logits).cpu().numpy()
        metrics = self.compute_metrics(probs, targets)
        score_raw = metrics.get(self.monitor_metric)
        logs = {"val/loss": val_loss}
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and v is not None and k != "n":
                logs[f"val/{k}"] = float(v)
        if self.ema_model is not None and self._val["ema_probs"]:
            ema_probs = self._gather(self._val["ema_probs"], keep)
            ema_metrics = self.compute_metrics(ema_probs, targets)
            score_ema = ema_metrics.get(self.monitor_metric)
            logs[f"val/{self.monitor_metric}_raw"] = _f(score_raw)
            logs[f"val/{self.monitor_metric}_ema"] = _f(score_ema)
            for k in EMA_SUMMARY_METRICS:  # both weights' headline numbers, whichever is kept (epoch summary, trackers)
                if isinstance(metrics.get(k), (int, float)):
                    logs[f"val/raw_{k}"] = float(metrics[k])
                if isinstance(ema_metrics.get(k), (int, float)):
                    logs[f"val/ema_{k}"] = float(ema_metrics[k])
            ema_better = score_ema is not None and (score_raw is None or score_ema >= score_raw)
            self.ema_better_by_epoch[int(self.current_epoch)] = bool(ema_better)
            if ema_better:  # the monitored value is the better of the two; the checkpoint says which
                for k, v in ema_metrics.items():
                    if isinstance(v, (int, float)) and v is not None and k != "n":
                        logs[f"val/{k}"] = float(v)
        self.log_dict({k: v for k, v in logs.items() if v == v}, prog_bar=False, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.history.append(self.history_row(logs))

    def compute_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        """Per-epoch validation metrics over the whole validation set (set by each task's module)."""
        raise NotImplementedError

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        logits = self.model(batch.images, batch.metadata)
        return {"probs": self.activation(logits.float()), "index": batch.index}

    # ----------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medlens_history"] = self.history
        # the random state after the last batch (dropout, mixup): a run resumed mid-epoch draws what the stopped one
        # would have (each epoch start reseeds from (seed, epoch) anyway)
        checkpoint["medlens_random_state"] = random_state(self._mix_gen)
        checkpoint["medlens_ema_better"] = self.ema_better_by_epoch
        if self.memory_format_probe is not None:
            checkpoint["medlens_memory_format"] = self.memory_format_probe
        if self.ema_model is not None:
            checkpoint["medlens_ema_state"] = self.ema_model.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("medlens_history", []))
        self._rng_pending = checkpoint.get("medlens_random_state")  # restored in on_train_start, before the first batch
        self.ema_better_by_epoch = dict(checkpoint.get("medlens_ema_better", {}))
        probe = checkpoint.get("medlens_memory_format")
        if self.channels_last == "auto" and isinstance(probe, dict):  # a resumed run keeps the layout it measured
            self.memory_format_probe = dict(probe)
            self.apply_memory_format(bool(probe.get("channels_last")))
        if self.ema_model is not None and "medlens_ema_state" in checkpoint:
            self.ema_model.load_state_dict(checkpoint["medlens_ema_state"])

    # ----------------------------------------------------------------- reproducible epochs
    def on_train_epoch_start(self) -> None:
        # Every epoch's randomness (augmentation, dropout, mixup) depends only on (seed, epoch), so a run
        # resumed from an epoch-end checkpoint continues exactly as an uninterrupted one.
        self._train_loss_sum, self._train_loss_n = 0.0, 0
        lr = self._epoch_lr = self.current_lr()
        if lr is not None:
            self.log("lr", lr, on_step=False, on_epoch=True, prog_bar=False)
        # backbone and head at different rates (optim.backbone_lr): the backbone's is logged too, as lr/backbone
        back = self.group_lrs().get("backbone")
        self._epoch_backbone_lr = back if back is not None and lr is not None and back != lr else None
        if self._epoch_backbone_lr is not None:
            self.log("lr/backbone", self._epoch_backbone_lr, on_step=False, on_epoch=True, prog_bar=False)
        s = (self.seed * 1000003 + int(self.current_epoch)) % (2**31 - 1)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        self._mix_gen.manual_seed(s)

    # ----------------------------------------------------------------- optimisation
    def _optimizer(self, cls, groups: list, **kw):
        """``cls(groups, fused=True, **kw)`` where torch has a fused kernel for it on these parameters' device,
        else the default (foreach) implementation. Fused AdamW is the same update in one kernel per step: on the
        2-core VM its step took 8 ms against 25 ms for ResNet-18 (about 5 % of a 64 px training step). Not with
        fp16 loss scaling, where Lightning unscales gradients before the step (fused optimizers unscale inside)."""
        trainer = getattr(self, "_trainer", None)
        precision = str(getattr(trainer, "precision", "32")) if trainer is not None else "32"
        self.fused_optimizer = False
        if not precision.startswith("16"):
            try:
                opt = cls([dict(g) for g in groups], fused=True, **kw)  # copies: the constructor fills in defaults
                self.fused_optimizer = True
                return opt
            except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device, dtype or torch version
                pass
        return cls(groups, **kw)

    def configure_optimizers(self):
        o = self.optim
        named = [(n.replace("_orig_mod.", ""), p) for n, p in self.model.named_parameters()]  # torch.compile prefix
        head = [p for n, p in named if not n.startswith("backbone.")]
        back = [p for n, p in named if n.startswith("backbone.")]

        def split_decay(params):
            decay = [p for p in params if p.ndim > 1]
            no_decay = [p for p in params if p.ndim <= 1]  # norms and biases
            return decay, no_decay

        groups = []
        for name, params, lr in (("backbone", back, o.backbone_lr or o.lr), ("head", head, o.lr)):
            d, nd = split_decay(params)
            if d:  # "name": which part a group trains (group_lrs logs the backbone's rate when it differs)
                groups.append({"params": d, "lr": lr, "weight_decay": o.weight_decay, "name": name})
            if nd:
                groups.append({"params": nd, "lr": lr, "weight_decay": 0.0, "name": name})
        if o.optimizer == "adamw":
            opt = self._optimizer(torch.optim.AdamW, groups, lr=o.lr)
        elif o.optimizer == "adam":
            opt = self._optimizer(torch.optim.Adam, groups, lr=o.lr)
        elif o.optimizer == "sgd":
            opt = self._optimizer(torch.optim.SGD, groups, lr=o.lr, momentum=o.momentum, nesterov=True)
        else:
            raise ValueError(f"unknown optimizer {o.optimizer!r}; valid: adamw, adam, sgd")
        if o.scheduler == "none":
            return opt
        if o.scheduler == "plateau":
            mode = "min" if self.monitor_mode == "min" else "max"
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=o.gamma if o.gamma < 1 else 0.1, patience=o.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": f"val/{self.monitor_metric}", "interval": "epoch"}}
        if o.scheduler == "multistep":
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o.milestones, gamma=o.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        # warmup + cosine, stepped per optimiser step
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps_per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warm = int(o.warmup_epochs * steps_per_epoch)
        base_lrs = [g["lr"] for g in groups]
        floor = [o.min_lr / lr if lr > 0 else 0.0 for lr in base_lrs]

        def factor_for(i: int):
            def f(step: int) -> float:
                if warm > 0 and step < warm:
                    return (step + 1) / warm
                prog = min((step - warm) / max(total - warm, 1), 1.0)
                return floor[i] + (1 - floor[i]) * 0.5 * (1 + math.cos(math.pi * prog))

            return f

        sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor_for(i) for i in range(len(groups))])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _f(x) -> float:
    return float("nan") if x is None else float(x)
