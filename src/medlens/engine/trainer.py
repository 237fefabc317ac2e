"""The Trainer factory: one place that maps config to ``lightning.Trainer`` arguments."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from medlens.engine.callbacks import AtomicCheckpointIO, FreezeBackbone

log = logging.getLogger("medlens.train")


def monitor_for(cfg, default: tuple[str, str]) -> tuple[str, str]:
    """The validation metric checkpoints follow, and its mode (``default``: the task's own choice)."""
    t = cfg.trainer
    if t.monitor != "auto":
        name = t.monitor.removeprefix("val/")
        mode = t.monitor_mode if t.monitor_mode != "auto" else ("min" if "loss" in name else "max")
        return name, mode
    return default


def _uses_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str:
    """What this CPU offers for bfloat16, from the ``/proc/cpuinfo`` flags (read once per process).

    * ``"matrix"``: AMX tiles (``amx_bf16``): bf16 matrix units; bf16 autocast trained ResNet-18 1.44-1.76x
      faster than float32 on such a machine.
    * ``"vector"``: ``avx512_bf16`` only (dot-product instructions, no AMX): bf16 autocast measured 0.78-0.83x
      float32 on the 2-core VM of 2026-11-28 (benchmarks/README.md), so it is not a speed-up.
    * ``"none"``: neither; bf16 is emulated and several times slower. Also where the flags cannot be read (no
      ``/proc/cpuinfo``: macOS, Windows), so an unknown CPU is treated as one without bf16 units.

    Example:
        >>> cpu_bf16_support() in ("matrix", "vector", "none")
        True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return "matrix" if "amx_bf16" in flags else "vector" if "avx512_bf16" in flags else "none"
    except OSError:
        return "none"
    return "none"


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX), the only CPUs where bf16 autocast was measured faster.

    Example:
        >>> isinstance(cpu_has_bf16(), bool)
        True
    """
    return cpu_bf16_support() == "matrix"


def precision_arg(p: str, accelerator: str) -> str:
    """Lightning's precision string for ``trainer.precision``.

    * ``32``: float32.
    * ``bf16``: bfloat16 autocast (CPU and recent GPUs). On a CPU without bf16 matrix units (see
      :func:`cpu_bf16_support`) it is honoured with one warning: emulated (no bf16 instructions) it runs several
      times slower than float32, and with ``avx512_bf16`` but no AMX it measured 0.8x float32.
    * ``16``: float16 autocast with loss scaling (CUDA only).
    * ``auto`` (the default): ``16`` on a CUDA GPU; on CPU ``bf16`` when the CPU has AMX bf16 units -- measured 1.44-1.76x the
      float32 training throughput on such a CPU (ResNet-18, 64 px; ``benchmarks/README.md``) -- else ``32``.

    Losses are always computed in float32.

    Example:
        >>> precision_arg("32", "cpu")
        '32-true'
    """
    cuda = p != "32" and _uses_cuda(accelerator)
    if p == "bf16":
        support = "cuda" if cuda else cpu_bf16_support()
        if support == "none":
            log.warning(
                "trainer.precision: bf16 on a CPU without bf16 units (no avx512_bf16/amx_bf16) runs several times "
                "slower than 32; use precision: 32 (or auto, which picks bf16 only where it is faster)"
            )
        elif support == "vector":
            log.warning(
                "trainer.precision: bf16 on a CPU with avx512_bf16 but no AMX bf16 units measured about 0.8x the "
                "speed of 32; use precision: 32 (or auto, which picks bf16 only where it is faster)"
            )
        return "bf16-mixed"
    if p == "16":
        if not cuda:
            raise ValueError("trainer.precision: 16 (float16 autocast) needs a CUDA GPU; use precision: bf16 on CPU")
        return "16-mixed"
    if p == "auto":
        if cuda:
            return "16-mixed"
        return "bf16-mixed" if cpu_has_bf16() else "32-true"
    return "32-true"


# ------------------------------------------------------------------- channels_last: auto, remembered per machine
#: File (in medlens' user cache, ``$MEDLENS_CACHE_DIR`` or ``~/.cache/medlens``) of the memory formats measured before.
PROBE_CACHE_NAME = "probe.json"
#: Choices kept in it (the oldest are dropped).
PROBE_CACHE_ENTRIES = 256


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model string (``/proc/cpuinfo`` "model name", else ``platform.processor()``), with the core count.

    Example:
        >>> "cores" in cpu_model()
        True
    """
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def probe_cache_path() -> Path:
    """Where ``trainer.channels_last: auto`` keeps the layouts it measured: ``<user cache>/probe.json``."""
    from medlens.data.diskcache import cache_root

    return cache_root() / PROBE_CACHE_NAME


def memory_format_key(module, images, metadata, precision: str) -> dict[str, Any]:
    """What a measured memory-format choice depends on: machine, software, network, input and precision."""
    import torch

    net = getattr(module, "model", module)
    arch = hashlib.sha256(repr(net).encode()).hexdigest()[:16]  # layer types, widths, kernels and strides
    device = torch.cuda.get_device_name(images.device) if images.is_cuda else "cpu"
    return {
        "machine": cpu_model(), "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "network": f"{type(net).__name__} {arch} ({sum(p.numel() for p in net.parameters())} parameters)",
        "input": list(images.shape), "metadata": None if metadata is None else list(metadata.shape),
        "precision": str(precision),
    }


def _key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def read_probe_cache(path: Path | None = None) -> dict[str, Any]:
    """The remembered choices (key id -> record); empty when the file is absent or unreadable."""
    path = path or probe_cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_probe(key: dict[str, Any], probe: dict[str, Any], path: Path | None = None) -> None:
    """Add one measured choice to the cache file (written atomically; concurrent runs may drop each other's entry,
    which costs one more probe, never a wrong one)."""
    from medlens._atomic import write_json_atomic

    path = path or probe_cache_path()
    data = read_probe_cache(path)
    data[_key_id(key)] = {**key, **{k: probe[k] for k in ("channels_last", "ms_contiguous", "ms_channels_last") if k in probe},
                          "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if len(data) > PROBE_CACHE_ENTRIES:
        data = dict(list(data.items())[-PROBE_CACHE_ENTRIES:])
    try:
        write_json_atomic(path, data)
    except OSError as e:  # a read-only home: the choice is simply measured again next time
        log.debug("trainer.channels_last: cannot write %s (%s)", path, e)


class MemoryFormatChoice(L.Callback):
    """``trainer.channels_last: auto`` measured once per machine, network, input size and precision.

    The module's probe (a few timed forward+backward steps in both layouts) took up to 45 s before the first epoch on
    a loaded 2-core machine. Before the module probes, this callback looks the choice up in
    :func:`probe_cache_path`; a hit applies it at once (no step is timed), a miss runs the module's probe and stores
    its result. The choice is then recorded in the run exactly as a measured one (``memory_format_probe``, with
    ``how: cached``), so a resumed run keeps it.
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if getattr(pl_module, "channels_last", None) != "auto" or batch is None or getattr(batch, "images", None) is None:
            return
        if batch.images.ndim != 4 or hasattr(getattr(pl_module, "model", None), "_orig_mod"):  # compiled: the module's own rule
            return
        import torch

        key = memory_format_key(pl_module, batch.images, batch.metadata, getattr(trainer, "precision", "32-true"))
        path = probe_cache_path()
        hit = read_probe_cache(path).get(_key_id(key))
        if hit is None or not isinstance(hit.get("channels_last"), bool):
            pl_module.choose_memory_format(batch)
            probe = pl_module.memory_format_probe or {}
            if str(probe.get("how", "")).startswith("probe"):
                remember_probe(key, probe, path)
            return
        use = hit["channels_last"]
        pl_module.memory_format_probe = {"channels_last": use, "ms_contiguous": hit.get("ms_contiguous"),
                                         "ms_channels_last": hit.get("ms_channels_last"),
                                         "how": f"cached: measured {hit.get('measured', '?')} ({path})"}
        pl_module.apply_memory_format(use)
        if use:
            batch.images = batch.images.contiguous(memory_format=torch.channels_last)
        log.info("trainer.channels_last auto: %s (as measured on %s for this network, input and precision; %s)",
                 "channels-last" if use else "contiguous", hit.get("measured", "?"), path)
        try:
            pl_module.log("channels_last", float(use), on_step=False, on_epoch=True, batch_size=len(batch.images))
        except Exception:  # pragma: no cover - not inside a Trainer loop
            pass


class TopKCheckpoint(ModelCheckpoint):
    """``trainer.save_top_k``: the k best checkpoints beside ``best.ckpt``, following the same metric.

    Its own class so that its state key (Lightning builds it from the class name, monitor and mode) differs from
    the best-checkpoint callback's, which follows the same metric: both are saved in and restored from a checkpoint.
    """


def build_trainer(cfg, run_dir: Path, monitor: tuple[str, str], loggers=None, extra_callbacks=None,
                  checkpoint_io: AtomicCheckpointIO | None = None) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer for a run: best + last checkpoints (atomic; optionally the top k and every N epochs), early stopping,
    freezing, progress bar.

    ``checkpoint_io``: the checkpoint plugin (default a fresh :class:`AtomicCheckpointIO`); :func:`~medlens.engine.fit.fit`
    passes one holding the resume checkpoint it has read, so Lightning restores that object, not the file again.

    Returns:
        (trainer, the best-checkpoint callback).
    """
    t = cfg.trainer
    metric, mode = monitor
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor=f"val/{metric}",
        mode=mode,
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [ckpt]
    if t.save_top_k != 1:  # best.ckpt stays the one best; the k best (all: -1) are kept beside it, named by epoch
        callbacks.append(TopKCheckpoint(
            dirpath=str(run_dir / "checkpoints" / "top"), filename="epoch{epoch:03d}", monitor=f"val/{metric}", mode=mode,
            save_top_k=t.save_top_k, auto_insert_metric_name=False, enable_version_counter=False,
        ))
    if t.checkpoint_every_n_epochs is not None:  # a checkpoint every N epochs, whatever the metric, none dropped
        callbacks.append(ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints" / "every"), filename="epoch{epoch:03d}", monitor=None, save_top_k=-1,
            every_n_epochs=t.checkpoint_every_n_epochs, auto_insert_metric_name=False, enable_version_counter=False,
        ))
    if t.channels_last == "auto":
        callbacks.append(MemoryFormatChoice())  # before the module's own probe: a remembered choice skips it
    if t.early_stopping_patience is not None:
        callbacks.append(EarlyStopping(monitor=f"val/{metric}", mode=mode, patience=t.early_stopping_patience,
                                       min_delta=t.early_stopping_min_delta))
    if cfg.optim.freeze_backbone or cfg.optim.freeze_epochs > 0:
        callbacks.append(FreezeBackbone(None if cfg.optim.freeze_backbone else cfg.optim.freeze_epochs))
    if t.progress_bar:
        from lightning.pytorch.callbacks import TQDMProgressBar

        try:
            import rich  # noqa: F401

            from medlens.engine.callbacks import epoch_progress_bar

            callbacks.append(epoch_progress_bar(leave=True))
        except ImportError:  # pragma: no cover
            callbacks.append(TQDMProgressBar())
    callbacks.extend(extra_callbacks or [])
    max_time = None
    if t.max_time_s is not None:
        from datetime import timedelta

        max_time = timedelta(seconds=t.max_time_s)
    kwargs = dict(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=max_time,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision_arg(t.precision, t.accelerator),
        callbacks=callbacks,
        logger=loggers if loggers else False,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        deterministic="warn" if t.deterministic else False,
        gradient_clip_val=cfg.optim.grad_clip,
        accumulate_grad_batches=cfg.optim.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        plugins=[checkpoint_io or AtomicCheckpointIO()],
        benchmark=False,
    )
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = t.limit_train_batches
    if t.val_check_interval is not None:
        kwargs["val_check_interval"] = t.val_check_interval
    return L.Trainer(**kwargs), ckpt
