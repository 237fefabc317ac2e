"""Callbacks and plugins: backbone freezing, the per-epoch summary line, the progress bar, atomic checkpoints."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medlens._atomic import chmod_as_created

log = logging.getLogger("medlens.train")


class FreezeBackbone(L.Callback):
    """Freeze the backbone for the first ``epochs`` epochs (or for the whole run when ``epochs`` is None).

    Frozen parameters get ``requires_grad=False`` and the backbone's normalisation layers stay in eval mode,
    so their running statistics are not disturbed while only the head learns. At epoch ``epochs`` (0-based)
    everything trains again; the optimiser already holds the backbone's parameters (with ``backbone_lr``), so
    nothing is rebuilt and a resumed run freezes or unfreezes by the epoch it resumes at.

    Example:
        >>> cb = FreezeBackbone(epochs=2)
        >>> [cb.frozen(e) for e in range(4)]
        [True, True, False, False]
    """

    def __init__(self, epochs: int | None) -> None:
        self.epochs = epochs

    def frozen(self, epoch: int) -> bool:
        """Whether the backbone is frozen during ``epoch`` (0-based)."""
        return self.epochs is None or epoch < self.epochs

    _frozen = frozen  # older name

    @staticmethod
    def _backbone(pl_module: L.LightningModule):
        model = pl_module.model
        return getattr(model, "_orig_mod", model).backbone  # torch.compile wraps the network

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = self.frozen(trainer.current_epoch)
        backbone = self._backbone(pl_module)
        for p in backbone.parameters():
            p.requires_grad_(not frozen)
        # Lightning restores each submodule's own mode after validation, so unfreezing must switch it back.
        backbone.train(not frozen)
        if self.epochs and trainer.current_epoch == self.epochs:
            log.info("epoch %d: backbone unfrozen", trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # Lightning puts the whole module back in train mode after every validation run (also mid-epoch).
        if self.frozen(trainer.current_epoch):
            backbone = self._backbone(pl_module)
            if backbone.training:
                backbone.eval()


def _num(row: dict[str, Any], key: str, fmt: str = ".4f") -> str | None:
    v = row.get(key)
    return None if not isinstance(v, (int, float)) or v != v else format(float(v), fmt)


def format_epoch_summary(row: dict[str, Any], max_epochs: int | None, threshold_method: str = "f1",
                         fixed_threshold: float = 0.5) -> str:
    """One console line for a validated epoch (a row of the module's history).

    Shows epoch k/N (1-based), train and val loss, val accuracy, F1 and AUROC (the raw weights' values when EMA
    is on), the epoch's validation threshold (binary: max-F1 or Youden, as ``trainer.threshold_method``), the
    EMA weights' accuracy/F1/AUROC and the EMA-minus-raw AUROC gap, and the learning rate. Missing values
    are left out.

    Example:
        >>> format_epoch_summary({"epoch": 0, "train/loss": 0.7, "val/loss": 0.69, "val/accuracy": 0.5, "lr": 1e-3}, 3)
        'epoch 1/3 | train loss 0.7000 | val loss 0.6900 acc 0.5000 | lr 1.00e-03'
    """
    parts = [f"epoch {int(row.get('epoch', 0)) + 1}/{max_epochs if max_epochs else '?'}"]
    if (x := _num(row, "train/loss")) is not None:
        parts.append(f"train loss {x}")
    raw = "val/raw_" if "val/raw_auroc_macro" in row or "val/raw_accuracy" in row else "val/"
    val = [f"{name} {x}" for name, key in (("loss", "val/loss"), ("acc", f"{raw}accuracy"), ("F1", f"{raw}f1_macro"),
                                            ("AUROC", f"{raw}auroc_macro")) if (x := _num(row, key)) is not None]
    if val:
        parts.append("val " + " ".join(val))
    if threshold_method == "fixed":
        if "val/threshold_f1" in row or "val/threshold_youden" in row:
            parts.append(f"thr {fixed_threshold:g} (fixed)")
    elif (x := _num(row, f"val/threshold_{threshold_method}")) is not None:
        parts.append(f"thr {x} ({'max-F1' if threshold_method == 'f1' else threshold_method})")
    ema = [f"{name} {x}" for name, key in (("acc", "val/ema_accuracy"), ("F1", "val/ema_f1_macro"), ("AUROC", "val/ema_auroc_macro"))
           if (x := _num(row, key)) is not None]
    if ema:
        gap = None
        if isinstance(row.get("val/ema_auroc_macro"), (int, float)) and isinstance(row.get("val/raw_auroc_macro"), (int, float)):
            gap = float(row["val/ema_auroc_macro"]) - float(row["val/raw_auroc_macro"])
        parts.append("EMA " + " ".join(ema) + ("" if gap is None or gap != gap else f" (EMA-raw AUROC {gap:+.4f})"))
    if (x := _num(row, "lr", ".2e")) is not None:
        parts.append(f"lr {x}")
    return " | ".join(parts)


class EpochSummary(L.Callback):
    """Log one line per validated epoch (``logging``, logger ``medlens.train``): see :func:`format_epoch_summary`.

    Args:
        max_epochs: the run's epoch count (shown as ``epoch k/N``).
        threshold_method: which validation threshold to show (``f1``, ``youden`` or ``fixed``).
        fixed_threshold: the threshold shown for ``fixed``.
    """

    def __init__(self, max_epochs: int | None, threshold_method: str = "f1", fixed_threshold: float = 0.5) -> None:
        self.max_epochs = max_epochs
        self.threshold_method = threshold_method
        self.fixed_threshold = fixed_threshold
        self.lines: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if trainer.sanity_checking or not history or not trainer.is_global_zero:
            return
        line = format_epoch_summary(history[-1], self.max_epochs, self.threshold_method, self.fixed_threshold)
        self.lines.append(line)
        log.info("%s", line)


def one_based_epoch_text(current_epoch: int, max_epochs: int | None) -> str:
    """Progress-bar text ``Epoch k/N`` counted from 1 (Lightning's own shows ``Epoch 0/0`` for a 1-epoch run).

    Example:
        >>> one_based_epoch_text(0, 1)
        'Epoch 1/1'
    """
    return f"Epoch {current_epoch + 1}" + (f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else "")


def epoch_progress_bar(**kw: Any) -> L.Callback:
    """Lightning's rich progress bar with epochs counted ``1/N`` (not ``0/N-1``, which reads ``Epoch 0/0``)."""
    from lightning.pytorch.callbacks import RichProgressBar

    class EpochProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the bar's text
            text = one_based_epoch_text(current_epoch, self.trainer.max_epochs)
            width = len(self.validation_description)
            return f"{text:{width}}" if width > len(text) else text

    return EpochProgressBar(**kw)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file in the same folder, then rename: a run killed at any moment
    leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while writing
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            chmod_as_created(tmp)  # mkstemp makes 0600: the user's umask decides, as for any file
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old or the new file, never half
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # Run checkpoints are written by medlens itself (trusted); bundles never use pickle.
        return torch.load(str(path), map_location=map_location or "cpu", weights_only=False)
