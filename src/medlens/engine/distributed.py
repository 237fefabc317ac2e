"""Multi-process training helpers: whole-validation-set gathering and rank checks.

Lightning's DDP/FSDP strategies give each process ``1 / world_size`` of the validation set through a
``DistributedSampler``, which pads the set with repeated samples so every process gets the same number.
Metrics and thresholds must be computed over the true validation set: :func:`gather_uneven` collects every
process' rows (lengths may differ, e.g. when unreadable images were skipped) and :func:`first_occurrences`
drops the padding repeats by their dataset row index.

Training order: Lightning wraps the training sampler (:class:`medlens.data.dataset.EpochSampler`, whose order
depends only on seed and epoch) in a ``DistributedSamplerWrapper`` that shuffles that order once more (and, before
Lightning 2.5, did not pass the epoch on). :class:`DistributedEpochOrder` turns the extra shuffle off, so N
processes with batch B take exactly the samples one process with batch N*B takes in each optimiser step.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DistributedSampler


def gather_uneven(x: torch.Tensor, all_gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Concatenate a tensor's rows from every process, in rank order, when row counts differ.

    ``torch.distributed.all_gather`` needs equal shapes, so each process pads to the longest row count, gathers,
    and the padding is cut off again.

    Args:
        x: (N_rank, ...) rows held by this process; trailing dimensions must agree across processes.
        all_gather: a collective such as ``LightningModule.all_gather`` mapping a tensor to (world_size, ...).

    Returns:
        (sum of N_rank, ...) on ``x.device``.

    Example:
        >>> fake = lambda t: torch.stack([t, t])  # two processes holding the same rows
        >>> gather_uneven(torch.arange(3), fake).tolist()
        [0, 1, 2, 0, 1, 2]
    """
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [int(s) for s in all_gather(n).reshape(-1).tolist()]
    longest = max(sizes) if sizes else 0
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    g = all_gather(x.contiguous())
    g = g.reshape(len(sizes), longest, *x.shape[1:])
    return torch.cat([g[r, : sizes[r]] for r in range(len(sizes))])


def first_occurrences(index: np.ndarray) -> np.ndarray:
    """Positions that keep one row per distinct sample index, ordered by the index (dataset order).

    Example:
        >>> first_occurrences(np.array([0, 2, 4, 1, 3, 0])).tolist()  # 5 samples padded to 6 on 2 processes
        [0, 3, 1, 4, 2]
    """
    _, pos = np.unique(np.asarray(index).reshape(-1), return_index=True)
    return pos


def env_is_global_zero() -> bool:
    """Whether this process is global rank 0 according to the launcher's environment.

    For work before Lightning has set up its process group (writing the resolved config): torchrun sets
    ``RANK``, Lightning's own launcher sets ``LOCAL_RANK``/``NODE_RANK`` in the processes it starts, and SLURM's
    ``srun`` sets ``SLURM_PROCID``. A plain single-process run is rank 0.

    Example:
        >>> env_is_global_zero()  # doctest: +SKIP
        True
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "LOCAL_RANK" in env:
        return int(env["LOCAL_RANK"]) == 0 and int(env.get("NODE_RANK", env.get("GROUP_RANK", 0))) == 0
    if "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return True


def _train_loaders(trainer: L.Trainer) -> list:
    dls = trainer.train_dataloader
    if dls is None:
        return []
    if isinstance(dls, dict):
        return list(dls.values())
    return list(dls) if isinstance(dls, (list, tuple)) else [dls]


class DistributedEpochOrder(L.Callback):
    """Under DDP, deal out the single-process sample order instead of a second shuffle of it.

    For a training sampler that orders rows by epoch itself (has ``set_epoch``, like ``EpochSampler``) wrapped by
    Lightning's ``DistributedSamplerWrapper``: the wrapped sampler gets the epoch, and the wrapper hands process
    ``r`` rows ``r, r + N, r + 2N, ...`` of that order. Does nothing in a single process.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size <= 1:
            return
        epoch = int(trainer.current_epoch)
        for dl in _train_loaders(trainer):
            batch_sampler = getattr(dl, "batch_sampler", None)
            for s in (getattr(dl, "sampler", None), getattr(batch_sampler, "sampler", None)):
                inner = getattr(getattr(s, "dataset", None), "_sampler", None)  # Lightning's _DatasetSamplerWrapper
                if isinstance(s, DistributedSampler) and hasattr(inner, "set_epoch"):
                    inner.set_epoch(epoch)
                    s.shuffle = False  # the order is the inner sampler's (seed, epoch) permutation or draws
