"""Whole-validation-set gathering, padding removal, rank checks and the DDP training order (no processes needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader, DistributedSampler

from medlens.data.dataset import EpochSampler
from medlens.engine.distributed import (
    DistributedEpochOrder,
    env_is_global_zero,
    first_occurrences,
    gather_uneven,
)


def two_process_gather(other: torch.Tensor):
    """all_gather as rank 0 of two processes sees it, the other process holding ``other``."""

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.int64 and t.shape == (1,):  # the row-count exchange
            return torch.stack([t, torch.tensor([other.shape[0]])])
        o = other
        if o.shape[0] < t.shape[0]:
            o = torch.cat([o, o.new_zeros((t.shape[0] - o.shape[0], *o.shape[1:]))])
        assert o.shape == t.shape, "all_gather needs equal shapes on every process"
        return torch.stack([t, o])

    return all_gather


@pytest.mark.parametrize("n0,n1", [(3, 3), (4, 2), (1, 5), (0, 2)])
def test_gather_uneven_concatenates_rows_of_every_process(n0, n1):
    mine = torch.arange(n0 * 2, dtype=torch.float32).reshape(n0, 2)
    other = 100 + torch.arange(n1 * 2, dtype=torch.float32).reshape(n1, 2)
    out = gather_uneven(mine, two_process_gather(other))
    assert out.shape == (n0 + n1, 2)
    assert torch.equal(out, torch.cat([mine, other]))


def test_padding_repeats_are_removed_in_dataset_order():
    # DistributedSampler over 5 rows on 2 processes: rank 0 gets 0, 2, 4 and rank 1 gets 1, 3, 0 (row 0 repeated)
    rows = [list(DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    index = np.array(rows[0] + rows[1])
    values = index * 10.0
    keep = first_occurrences(index)
    assert index[keep].tolist() == [0, 1, 2, 3, 4]
    assert values[keep].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize(
    "env,zero",
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "3", "LOCAL_RANK": "1"}, False),  # torchrun
        ({"LOCAL_RANK": "1"}, False),  # Lightning's launcher, second process
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # second node
        ({"SLURM_PROCID": "0"}, True),
        ({"SLURM_PROCID": "2"}, False),  # srun
    ],
)
def test_env_is_global_zero(monkeypatch, env, zero):
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert env_is_global_zero() is zero


@pytest.mark.parametrize("weights", [None, np.linspace(1, 3, 22)])
@pytest.mark.parametrize("epoch", [0, 3])
def test_ddp_shards_deal_out_the_single_process_order(epoch, weights):
    """With the callback, process r of N takes every N-th row of the single-process (seed, epoch) order, so one
    step's N batches of B rows are exactly the single process' batch of N*B rows."""
    n, world, batch = 22, 2, 4
    single = EpochSampler(n, seed=7, weights=weights)
    single.set_epoch(epoch)
    expected = list(single)
    shards = []
    for rank in range(world):
        # what Lightning puts in the training loader under DDP (shuffle=True for training)
        wrapper = DistributedSamplerWrapper(EpochSampler(n, seed=7, weights=weights), num_replicas=world, rank=rank, shuffle=True, seed=7)
        wrapper.set_epoch(epoch)  # Lightning's own call
        loader = DataLoader(range(n), batch_size=batch, sampler=wrapper)
        trainer = SimpleNamespace(world_size=world, current_epoch=epoch, train_dataloader=loader)
        DistributedEpochOrder().on_train_epoch_start(trainer, None)
        shards.append([int(i) for b in loader for i in b])
    for step in range(n // (world * batch)):
        got = sorted(shards[0][step * batch : (step + 1) * batch] + shards[1][step * batch : (step + 1) * batch])
        assert got == sorted(expected[step * world * batch : (step + 1) * world * batch])


def test_epoch_order_callback_leaves_single_process_alone():
    loader = DataLoader(range(6), sampler=EpochSampler(6, seed=1))
    trainer = SimpleNamespace(world_size=1, current_epoch=2, train_dataloader=loader)
    DistributedEpochOrder().on_train_epoch_start(trainer, None)
    assert loader.sampler.epoch == 0  # Lightning itself sets the epoch of an unwrapped sampler
