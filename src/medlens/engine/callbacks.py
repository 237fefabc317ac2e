"""Callbacks and plugins: backbone freezing, the per-epoch summary line, the progress bar, atomic checkpoints."""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medlens._atomic import chmod_as_created
from medlens.engine.checkpoint import ResumeCheckpoint
from medlens.engine.signals import TrainingInterrupted

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


def format_epoch_summary(row: dict[str, Any], max_epochs: int | None, task_part: str = "") -> str:
    """One console line for a validated epoch (a row of the module's history).

    Shows epoch k/N (1-based), train and val loss, the task's own part (``Task.epoch_line``: e.g. AUROC and the
    epoch's threshold for a classifier) and the learning rate (head and backbone when they differ). Missing values
    are left out.

    Example:
        >>> format_epoch_summary({"epoch": 0, "train/loss": 0.7, "val/loss": 0.69, "lr": 1e-3}, 3, "val acc 0.5000")
        'epoch 1/3 | train loss 0.7000 | val loss 0.6900 | val acc 0.5000 | lr 1.00e-03'
    """
    parts = [f"epoch {int(row.get('epoch', 0)) + 1}/{max_epochs if max_epochs else '?'}"]
    if (x := _num(row, "train/loss")) is not None:
        parts.append(f"train loss {x}")
    if (x := _num(row, "val/loss")) is not None:
        parts.append(f"val loss {x}")
    if task_part:
        parts.append(task_part)
    if (x := _num(row, "lr", ".2e")) is not None:
        back = _num(row, "lr/backbone", ".2e")  # only in rows where the backbone's rate differs from the head's
        parts.append(f"lr {x}" if back is None else f"lr head {x} backbone {back}")
    return " | ".join(parts)


class EpochSummary(L.Callback):
    """Log one line per validated epoch (``logging``, logger ``medlens.train``): see :func:`format_epoch_summary`.

    Args:
        max_epochs: the run's epoch count (shown as ``epoch k/N``).
        describe: the task's part of the line from a history row (``Task.epoch_line``); None: losses only.
    """

    def __init__(self, max_epochs: int | None, describe: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.max_epochs = max_epochs
        self.describe = describe
        self.lines: list[str] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if trainer.sanity_checking or not history or not trainer.is_global_zero:
            return
        line = format_epoch_summary(history[-1], self.max_epochs, self.describe(history[-1]) if self.describe else "")
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
    leaves the previous checkpoint intact. Read them without executing code, and never twice.

    Args:
        resume: the resume checkpoint already read (:func:`medlens.engine.checkpoint.read_resume`): when Lightning
            asks for its path, that object is returned instead of reading the file again, so what was checked is
            what is restored. Every other read is ``torch.load(weights_only=True)``.
    """

    def __init__(self, resume: ResumeCheckpoint | None = None) -> None:
        super().__init__()
        self.resume = resume

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

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        """The resume checkpoint read before (once), or the file read with ``weights_only=True``.

        ``weights_only`` is accepted for Lightning's signature and ignored: a checkpoint never runs code here.
        Tensors are on the CPU (``map_location`` is ignored too); Lightning moves them to the device.
        """
        from medlens.engine.checkpoint import load_checkpoint

        if self.resume is not None and self.resume.matches(path):
            resume, self.resume = self.resume, None
            return resume.take()
        return load_checkpoint(path)


class GracefulStop(L.Callback):
    """Save ``checkpoint`` when the Trainer stops on SIGTERM or a first Ctrl-C; remember which signal it was.

    Args:
        checkpoint: where the last checkpoint goes (the run's ``checkpoints/last.ckpt``).

    Attributes:
        signal_name: the signal that stopped the run, or None.
        saved: the checkpoint written on the way out, or None.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.signal_name: str | None = None
        self.saved: str | None = None
        self._trainer: L.Trainer | None = None
        self._previous_sigint: Any = None

    # ---------------------------------------------------------------- Ctrl-C: stop at the next batch boundary
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None or self._trainer is None:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = "SIGINT"
        log.warning("Ctrl-C: stopping after this batch and saving a checkpoint (press Ctrl-C again to stop at once)")
        # Lightning's loops check this flag after every batch and stop through SIGTERMException; its public
        # property is read-only, so the flag is set on the connector that owns it
        connector = getattr(self._trainer, "_signal_connector", None)
        if connector is None or not hasattr(connector, "received_sigterm"):  # pragma: no cover - another Lightning
            raise KeyboardInterrupt
        connector.received_sigterm = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._trainer = trainer
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _restore(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None
        self._trainer = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    # ---------------------------------------------------------------- the stop itself
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            if isinstance(exception, SIGTERMException):
                self.signal_name = self.signal_name or "SIGTERM"
                # the batch in flight has finished: the state is consistent and worth keeping
                trainer.save_checkpoint(str(self.checkpoint))
                if self.checkpoint.is_file():
                    self.saved = str(self.checkpoint)
                    log.warning("%s: checkpoint saved to %s (epoch %d, step %d)", self.signal_name, self.checkpoint,
                                trainer.current_epoch, trainer.global_step)
            elif isinstance(exception, KeyboardInterrupt):
                self.signal_name = "SIGINT"  # a second Ctrl-C, mid-batch: no checkpoint of a half-done step
        finally:
            self._restore()

    def interrupted(self) -> TrainingInterrupted | None:
        """The exception :func:`~medlens.engine.fit.fit` raises after a stop by signal, else None."""
        if self.signal_name is None:
            return None
        ck = self.saved or (str(self.checkpoint) if self.checkpoint.is_file() else None)
        return TrainingInterrupted(self.signal_name, ck)


class TrainClock(L.Callback):
    """Training time summed over sessions: a resumed run reports the time of all its sessions, not of the last one.

    Each checkpoint carries the seconds trained so far (``medlens_train_time_s``); a run resumed from it starts
    its clock there. Time between sessions (the run stopped, or a crash) is not counted.

    Example:
        >>> clock = TrainClock()
        >>> clock.on_load_checkpoint(None, None, {"medlens_train_time_s": 12.5})
        >>> clock.total_s() >= 12.5
        True
    """

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self.before_s = 0.0  # seconds of earlier sessions (from the resume checkpoint)
        self._t0 = self._now()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._now()

    def total_s(self) -> float:
        """Seconds trained, earlier sessions included."""
        return self.before_s + (self._now() - self._t0)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["medlens_train_time_s"] = self.total_s()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        v = checkpoint.get("medlens_train_time_s")
        self.before_s = float(v) if isinstance(v, (int, float)) and v == v and v >= 0 else 0.0


class LoaderProgress(L.Callback):
    """Tells a training loader that keeps its own place in the epoch (a shard stream,
    :class:`medlens.data.stream.StreamLoader`) which epoch starts and each batch trained, and carries that place
    through checkpoints (``medlens_loader_state``).

    The loader's state is restored in ``on_train_start``, before its first batch is drawn. Lightning's own
    stateful-loader restore is not enough: it runs only when the training loader is first set up after the
    checkpoint was read, and a module that asks for ``trainer.estimated_stepping_batches`` in
    ``configure_optimizers`` (the cosine schedule's length) sets it up before. Loaders without ``batch_done`` are
    left alone.
    """

    KEY = "medlens_loader_state"

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    @staticmethod
    def _loaders(trainer: L.Trainer) -> list:
        dls = trainer.train_dataloader
        dls = list(dls.values()) if isinstance(dls, dict) else list(dls) if isinstance(dls, list | tuple) else [dls]
        return [dl for dl in dls if hasattr(dl, "batch_done") and hasattr(dl, "set_epoch")]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = [dl.state_dict() for dl in self._loaders(trainer)]
        if states:
            checkpoint[self.KEY] = states

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:
            for dl, state in zip(self._loaders(trainer), self._pending, strict=False):
                dl.load_state_dict(state)
            self._pending = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for dl in self._loaders(trainer):
            dl.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        for dl in self._loaders(trainer):
            dl.batch_done()
